extension TaskSpec {
    /// Whether a node with `attributes` meets this task's constraints: its plan's and its own, and-ed (a task or
    /// plan without any: matched). An expression that cannot be read is not matched, its reason naming the field
    /// (`plan.constraints` or `constraints`) and the column.
    public func constraintVerdict(on attributes: NodeAttributes) -> ConstraintVerdict {
        for (field, text) in [("plan.constraints", plan.constraints), ("constraints", constraints)] {
            guard let text else { continue }
            let expression: ConstraintExpression
            do {
                expression = try ConstraintExpression.parse(text)
            } catch {
                return ConstraintVerdict(matched: false, reason: "\(field) cannot be read: \(error)")
            }
            let verdict = expression.evaluate(attributes)
            if !verdict.matched {
                return ConstraintVerdict(matched: false, reason: "\(field) not met by this node: "
                                         + (verdict.reason ?? "the expression is false"))
            }
        }
        return .matched
    }
}

extension ToolPlan {
    /// Whether a node with `attributes` meets the plan's constraints (`fem-client render`).
    public func constraintVerdict(on attributes: NodeAttributes) -> ConstraintVerdict {
        TaskSpec(schemaVersion: 1, taskID: "", executionID: "", plan: self, params: [:], timeoutSeconds: nil,
                 stageOut: nil, flower: nil).constraintVerdict(on: attributes)
    }
}
