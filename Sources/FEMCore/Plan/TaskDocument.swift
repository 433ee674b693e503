import Foundation

/// A task document as the command-line tools make it (`femctl submit`, `fem-client render/run`): a task file as
/// given, or a plan wrapped into a local task, with `--param name=value` overrides typed by the plan's argument types.
public enum TaskDocument {
    /// A `--param` that is not `name=value`.
    public struct ParamError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    public static func task(from value: JSONValue, params: [String]) throws(ParamError) -> JSONValue {
        var task: [String: JSONValue]
        if value["plan"] != nil {
            task = value.objectValue ?? [:]
        } else {
            task = ["schema_version": .int(1), "execution_id": .string("local-\(shortID())"), "plan": value]
        }
        var given = task["params"]?.objectValue ?? [:]
        let args = task["plan"]?["command"]?["args"].flatMap { v -> [JSONValue]? in
            if case .array(let a) = v { a } else { nil }
        } ?? []
        for p in params {
            guard let eq = p.firstIndex(of: "=") else {
                throw ParamError(description: "--param \(p): expected name=value")
            }
            let name = String(p[..<eq])
            let text = String(p[p.index(after: eq)...])
            let ids = args.compactMap { $0["id"]?.stringValue }
            guard let arg = args.first(where: { $0["id"]?.stringValue == name }) else {
                let planID = task["plan"]?["id"]?.stringValue.map { " \($0)" } ?? ""
                throw ParamError(description: "--param \(p): the plan\(planID) has no argument \(name) (its arguments: "
                                 + (ids.isEmpty ? "none" : ids.joined(separator: ", ")) + ")")
            }
            let type = arg["type"]?.stringValue
            // The plan's own words: `--param count=abc: count is an int`, never JSON types.
            if let problem = problem(text, name: name, type: type) {
                throw ParamError(description: "--param \(p): \(problem)")
            }
            given[name] = typed(text, type: type)
        }
        task["params"] = .object(given)
        return .object(task)
    }

    /// Why `text` is not a value of the plan's argument type `type`, in the plan's terms; nil when it is.
    public static func problem(_ text: String, name: String, type: String?) -> String? {
        switch type {
        case "int": Int64(text) == nil ? "\(name) is an int (a whole number such as 3), not \"\(text.prefix(40))\"" : nil
        case "float": Double(text) == nil ? "\(name) is a float (a number such as 0.8), not \"\(text.prefix(40))\"" : nil
        case "bool": text == "true" || text == "false" ? nil : "\(name) is a bool (true or false), not \"\(text.prefix(40))\""
        default: nil
        }
    }

    /// `--param count=3` is an integer when the plan says `int`; otherwise the text as given, so a wrong value
    /// gets the validator's message naming the parameter.
    public static func typed(_ text: String, type: String?) -> JSONValue {
        switch type {
        case "int": Int64(text).map(JSONValue.int) ?? .string(text)
        case "float": Double(text).map(JSONValue.double) ?? .string(text)
        case "bool": text == "true" ? .bool(true) : text == "false" ? .bool(false) : .string(text)
        default: .string(text)
        }
    }

    public static func shortID() -> String { String(UUID().uuidString.lowercased().prefix(8)) }
}
