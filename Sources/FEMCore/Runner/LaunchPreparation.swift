import Foundation

/// What a task needs before it can run, decided without running anything: the launcher, the timeout, the rendered
/// command, and the node's policy checks. Pure (no journal, no I/O), so it is tested without an actor.
struct LaunchPreparation: Sendable {
    let settings: RunnerSettings
    let registry: LauncherRegistry
    let sandboxes: any SandboxProvider
    let stageIn: any StageIn
    let stageOut: any StageOut

    /// Picks the launcher, checks node policy and renders the command. A failure here is a decline.
    func prepare(_ spec: TaskSpec) -> Result<(job: LaunchJob, launcher: any Launcher), PolicyDecline> {
        guard let launcher = registry.launcher(named: spec.plan.launcher) else {
            return .failure(PolicyDecline("launcher \"\(spec.plan.launcher)\" is not enabled on this node "
                                          + "(launchers.enabled: "
                                          + (registry.names.isEmpty ? "none" : registry.names.joined(separator: ", "))
                                          + ")"))
        }
        let timeout: Int
        switch effectiveTimeout(spec) {
        case .success(let t): timeout = t
        case .failure(let d): return .failure(d)
        }
        let hostPaths = sandboxes.paths(taskID: spec.taskID)
        var datasets: [String: String] = [:]
        for (id, path) in settings.datasets { datasets[id] = launcher.datasetPath(id: id, hostPath: path) }
        let context = RenderContext(nodeID: settings.nodeID, nodeName: settings.nodeName,
                                    paths: launcher.toolPaths(forHost: hostPaths), datasets: datasets)
        let command: RenderedCommand
        do {
            command = try Renderer.render(spec, context: context, timeoutSeconds: timeout)
        } catch {
            return .failure(PolicyDecline("\(error)"))
        }
        // The site's trust policy (signature, tool registry) before any of the plan's own requests are weighed.
        let verdict: TrustVerdict
        switch settings.trust.admit(spec.plan, taskID: spec.taskID) {
        case .success(let v): verdict = v
        case .failure(let d): return .failure(d)
        }
        var job = LaunchJob(task: spec, command: command, sandbox: hostPaths)
        job.trust = verdict
        // Every launcher: no plan variable that makes a program load or run other code (EnvironmentPolicy).
        if let reason = EnvironmentPolicy.problem(in: spec.plan.env, allowed: settings.envAllowed) {
            return .failure(PolicyDecline(reason))
        }
        if let reason = stageIn.check(spec.plan) { return .failure(PolicyDecline(reason)) }
        if let reason = stageOut.check(spec.stageOut) { return .failure(PolicyDecline(reason)) }
        if let reason = launcher.policyCheck(job) { return .failure(PolicyDecline(reason)) }
        return .success((job, launcher))
    }

    /// The timeout a task runs with: its own, its plan's or the node's default, within what the node allows.
    func effectiveTimeout(_ spec: TaskSpec) -> Result<Int, PolicyDecline> {
        let planTimeout = spec.plan.timeoutSeconds
        if let asked = spec.timeoutSeconds, let planTimeout, asked > planTimeout, !settings.allowTimeoutAbovePlan {
            return .failure(PolicyDecline("timeout_seconds \(asked) is above the plan's \(planTimeout), and this node "
                                          + "does not allow tasks to extend a plan's timeout"))
        }
        let t = spec.timeoutSeconds ?? planTimeout ?? settings.defaultTimeoutSeconds
        if t > settings.maxTimeoutSeconds {
            return .failure(PolicyDecline("timeout \(t) s is above this node's limit of \(settings.maxTimeoutSeconds) s"))
        }
        return .success(t)
    }
}
