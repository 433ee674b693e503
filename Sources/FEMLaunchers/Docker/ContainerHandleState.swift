import FEMCore

/// What the Docker launcher journals about a task's container.
public struct ContainerHandleState: LauncherState {
    public static let version = 2

    public var container: String
    /// Where the container's output is copied on the host.
    public var stdout: String
    public var stderr: String
    /// The task's cgroup path (its container's `CgroupParent`), when the node made one.
    public var cgroup: String?

    public init(container: String, stdout: String, stderr: String, cgroup: String?) {
        self.container = container
        self.stdout = stdout
        self.stderr = stderr
        self.cgroup = cgroup
    }

    /// A handle of a daemon before typed state: `container`, `stdout`, `stderr` (and `cgroup`) as strings.
    public init?(legacy data: [String: String]) {
        guard let container = data["container"], let stdout = data["stdout"], let stderr = data["stderr"] else {
            return nil
        }
        self.init(container: container, stdout: stdout, stderr: stderr, cgroup: data["cgroup"])
    }
}
