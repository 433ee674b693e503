import FEMCore
import FEMStaging
import Foundation
import TOMLKit

// The node configuration file, one `Codable` struct per section, decoded by TOMLKit's `TOMLDecoder`. A key's default
// is its property's initial value; each is read through `ConfigReading`, which applies its `FEM_<SECTION>_<KEY>`
// override and turns a wrong type into a message naming the key. Ranges, formats and files are checked afterwards
// (ConfigValidation.swift). Adding a key: a property with its default, a coding key, a line in `init(from:)`, its
// range in `validate`, and a commented entry in config/fem-client.example.toml.

/// The whole file.
struct ConfigFile: Codable, Sendable {
    var node = NodeSection()
    var broker = BrokerSection()
    var launchers = LaunchersSection()
    var stageIn = StageInSection()
    var sandboxes = SandboxesSection()
    var outputs = OutputsSection()
    var journal = JournalSection()
    var reporter = ReporterSection()
    var metrics = MetricsSection()
    var trust = TrustSection()
    var console = ConsoleSection()
    /// `[registries."host:port"]`: logins for image pulls.
    var registries: [String: LoginEntry] = [:]
    /// `[credentials."name"]`: logins plans and tasks name by reference.
    var credentials: [String: LoginEntry] = [:]
    /// `[hooks]`: name → argv.
    var hooks: [String: [String]] = [:]
    /// `[datasets.<id>]`.
    var datasets: [String: DatasetEntry] = [:]

    enum CodingKeys: String, CodingKey {
        case node, broker, launchers, stageIn = "stage_in", sandboxes, outputs, journal, reporter, registries,
             credentials, hooks, datasets
        case metrics
        case trust
        case console
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        node = r.section(c, .node) ?? node
        broker = r.section(c, .broker) ?? broker
        launchers = r.section(c, .launchers) ?? launchers
        stageIn = r.section(c, .stageIn) ?? stageIn
        sandboxes = r.section(c, .sandboxes) ?? sandboxes
        outputs = r.section(c, .outputs) ?? outputs
        journal = r.section(c, .journal) ?? journal
        reporter = r.section(c, .reporter) ?? reporter
        metrics = r.section(c, .metrics) ?? metrics
        trust = r.section(c, .trust) ?? trust
        console = r.section(c, .console) ?? console
        registries = Self.named(c, .registries, r, notATable: "expected [registries.\"name\"] sections") { name in
            "registries.\"\(name)\": expected a table with " + LoginEntry.allowed(tokens: false).joined(separator: ", ")
        }
        credentials = Self.named(c, .credentials, r, notATable: "expected [credentials.\"name\"] sections") { name in
            "credentials.\"\(name)\": expected a table with " + LoginEntry.allowed(tokens: true).joined(separator: ", ")
        }
        datasets = Self.named(c, .datasets, r, notATable: "expected a table of [datasets.<id>] sections") { id in
            "datasets.\(id): expected a table with path and labels"
        }
        hooks = Self.hooks(c, r)
    }

    /// A table of named entries, each decoded on its own so one bad entry does not hide the others.
    private static func named<T: Decodable>(_ c: KeyedDecodingContainer<CodingKeys>, _ key: CodingKeys,
                                            _ r: ConfigReading, notATable: String,
                                            entryNotATable: (String) -> String) -> [String: T] {
        guard c.contains(key) else { return [:] }
        guard let t = try? c.nestedContainer(keyedBy: NameKey.self, forKey: key) else {
            r.note("\(key.stringValue): \(notATable)")
            return [:]
        }
        var entries: [String: T] = [:]
        for name in t.allKeys {
            guard (try? t.nestedContainer(keyedBy: NameKey.self, forKey: name)) != nil else {
                r.note(entryNotATable(name.stringValue))
                continue
            }
            do {
                entries[name.stringValue] = try t.decode(T.self, forKey: name)
            } catch {
                r.note(r.describe(error, expected: "a table"))
            }
        }
        return entries
    }

    /// `[hooks]`: `name = ["/absolute/program", "fixed", "args"]`.
    private static func hooks(_ c: KeyedDecodingContainer<CodingKeys>, _ r: ConfigReading) -> [String: [String]] {
        guard c.contains(.hooks) else { return [:] }
        guard let t = try? c.nestedContainer(keyedBy: NameKey.self, forKey: .hooks) else {
            r.note("hooks: expected a table of name = [\"/program\", \"args\"...]")
            return [:]
        }
        var hooks: [String: [String]] = [:]
        for name in t.allKeys {
            guard let argv = try? t.decode([String].self, forKey: name), let program = argv.first,
                  program.hasPrefix("/") else {
                r.note("hooks.\(name.stringValue): expected an array of strings starting with an absolute program path")
                continue
            }
            hooks[name.stringValue] = argv
        }
        return hooks
    }
}

/// `[node]`.
struct NodeSection: Codable, Sendable {
    /// Required: names the node's queues and events.
    var id: String?
    var name = ""
    var workDir = "var"
    var logFile = "receiver.log"
    var maxConcurrentTasks = 2
    var heartbeatInterval = 30
    var defaultTimeout = 3600
    var maxTimeout = 604_800
    var allowTimeoutAbovePlan = false
    var stopGrace = 10
    var minFreeMB = 256
    var drainSeconds = 30
    /// Work pools consumed besides the node's own queue (`fem.pool.<name>`).
    var pools: [String] = []
    /// Passes (returns to the pool by a node that could not take it) before a pool task is dead-lettered.
    var poolMaxPasses = 10
    /// `[node.labels]`: key = string, number, boolean or a list of them.
    var labels: [String: AttributeValue] = [:]
    /// receiver.log rotates itself past this size (0: never; logrotate with a SIGHUP instead), keeping `logKeep` files.
    var logMaxMB = 0
    var logKeep = 5
    /// "text" (one readable line) or "json" (one JSON object per line, for log shippers).
    var logFormat = "text"
    /// `[node.capacity]`.
    var capacity = CapacitySection()

    enum CodingKeys: String, CodingKey {
        case id, name, workDir = "work_dir", logFile = "log_file", maxConcurrentTasks = "max_concurrent_tasks",
             heartbeatInterval = "heartbeat_interval", defaultTimeout = "default_timeout", maxTimeout = "max_timeout",
             allowTimeoutAbovePlan = "allow_timeout_above_plan", stopGrace = "stop_grace", minFreeMB = "min_free_mb",
             drainSeconds = "drain_seconds", pools, poolMaxPasses = "pool_max_passes"
        case capacity
        case labels
        case logMaxMB = "log_max_mb", logKeep = "log_keep", logFormat = "log_format"
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        id = r.required(c, .id)
        name = r.value(c, .name) ?? name
        workDir = r.value(c, .workDir) ?? workDir
        logFile = r.value(c, .logFile) ?? logFile
        maxConcurrentTasks = r.value(c, .maxConcurrentTasks) ?? maxConcurrentTasks
        heartbeatInterval = r.value(c, .heartbeatInterval) ?? heartbeatInterval
        defaultTimeout = r.value(c, .defaultTimeout) ?? defaultTimeout
        maxTimeout = r.value(c, .maxTimeout) ?? maxTimeout
        allowTimeoutAbovePlan = r.value(c, .allowTimeoutAbovePlan) ?? allowTimeoutAbovePlan
        stopGrace = r.value(c, .stopGrace) ?? stopGrace
        minFreeMB = r.value(c, .minFreeMB) ?? minFreeMB
        drainSeconds = r.value(c, .drainSeconds) ?? drainSeconds
        pools = r.value(c, .pools) ?? pools
        poolMaxPasses = r.value(c, .poolMaxPasses) ?? poolMaxPasses
        logMaxMB = r.value(c, .logMaxMB) ?? logMaxMB
        logKeep = r.value(c, .logKeep) ?? logKeep
        logFormat = r.value(c, .logFormat) ?? logFormat
        labels = Self.labels(c, r)
        capacity = r.section(c, .capacity) ?? capacity
    }

    /// `[node.labels]`, each value a string, a number, a boolean or a list of those (a problem names the key).
    static func labels(_ c: KeyedDecodingContainer<CodingKeys>, _ r: ConfigReading) -> [String: AttributeValue] {
        let path = c.codingPath + [CodingKeys.labels]
        r.markKnown(ConfigReading.name(path))
        guard c.contains(.labels) else { return [:] }
        guard let table = r.rawValue(at: path)?.table else {
            r.note("node.labels: expected a table ([node.labels]) of key = value")
            return [:]
        }
        func scalar(_ v: any TOMLValueConvertible) -> AttributeValue? {
            if let b = v.bool { return .bool(b) }
            if let i = v.int { return .number(Double(i)) }
            if let d = v.double, d.isFinite { return .number(d) }
            if let s = v.string { return .string(s) }
            return nil
        }
        var labels: [String: AttributeValue] = [:]
        for key in table.keys.sorted() {
            guard let value = table[key] else { continue }
            if let s = scalar(value) {
                labels[key] = s
            } else if let array = value.array {
                var items: [AttributeValue] = []
                for (i, item) in array.enumerated() {
                    guard let s = scalar(item) else {
                        r.note("node.labels.\(key)[\(i)]: expected a string, number or boolean, got \(item.type)")
                        continue
                    }
                    items.append(s)
                }
                labels[key] = .list(items)
            } else {
                r.note("node.labels.\(key): expected a string, number, boolean or a list of them, got \(value.type)")
            }
        }
        return labels
    }

    func validate(_ v: inout ConfigValidator) {
        let k = { (key: CodingKeys) in "node.\(key.stringValue)" }
        v.range(k(.maxConcurrentTasks), maxConcurrentTasks, 1...1024)
        v.range(k(.heartbeatInterval), heartbeatInterval, 1...86_400)
        v.range(k(.defaultTimeout), defaultTimeout, 1...31_536_000)
        v.range(k(.maxTimeout), maxTimeout, 1...31_536_000)
        v.range(k(.stopGrace), stopGrace, 0...3600)
        v.range(k(.minFreeMB), minFreeMB, 0...(1 << 30))
        v.range(k(.drainSeconds), drainSeconds, 0...86_400)
        v.range(k(.poolMaxPasses), poolMaxPasses, 1...1000)
        for p in pools where !Patterns.matches(#"^[a-z0-9-]{1,64}$"#, p) {
            v.note("node.pools: \"\(TextEscaping.escaped(p))\" is not a pool name (lowercase letters, digits and '-', "
                   + "1 to 64; it names the queue fem.pool.<name>)")
        }
        if Set(pools).count != pools.count { v.note("node.pools: lists a pool more than once") }
        v.labels(labels)
        v.range(k(.logMaxMB), logMaxMB, 0...1_048_576)
        v.range(k(.logKeep), logKeep, 1...100)
        if !["text", "json"].contains(logFormat) {
            v.note("\(k(.logFormat)): \"\(logFormat)\" is not one of \"text\", \"json\"")
        }
        capacity.validate(&v)
    }
}

/// `[node.capacity]`: what running tasks' `resources` may reserve in all. A key left out takes the host's value
/// (CPUs online, MemTotal, free disk under the work dir at start; GPUs: 0).
struct CapacitySection: Codable, Sendable {
    var cpus: Int?
    var memoryMB: Int?
    var gpus: Int?
    var storageMB: Int?

    enum CodingKeys: String, CodingKey {
        case cpus, memoryMB = "memory_mb", gpus, storageMB = "storage_mb"
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        cpus = r.value(c, .cpus)
        memoryMB = r.value(c, .memoryMB)
        gpus = r.value(c, .gpus)
        storageMB = r.value(c, .storageMB)
    }

    func validate(_ v: inout ConfigValidator) {
        let k = { (key: CodingKeys) in "node.capacity.\(key.stringValue)" }
        if let cpus { v.range(k(.cpus), cpus, 1...65_536) }
        if let memoryMB { v.range(k(.memoryMB), memoryMB, 1...(1 << 40)) }
        if let gpus { v.range(k(.gpus), gpus, 0...1024) }
        if let storageMB { v.range(k(.storageMB), storageMB, 0...(1 << 40)) }
    }
}

/// `[broker]`.
struct BrokerSection: Codable, Sendable {
    var url: String?
    /// "" logs in with the client certificate (or FEM_BROKER_PASSWORD).
    var passwordFile = ""
    var caFile: String?
    var certFile: String?
    var keyFile: String?
    var prefetch = 16
    var maxMessageBytes = 1 << 20
    var orchestrators = ["fem-orchestrator"]
    /// Accounts of the other nodes in this node's pools: a pool task one of them returned (it could not take it, or
    /// it failed there and is retried) carries that node's account as user_id.
    var poolPeers: [String] = []

    enum CodingKeys: String, CodingKey {
        case url, passwordFile = "password_file", caFile = "ca_file", certFile = "cert_file", keyFile = "key_file",
             prefetch, maxMessageBytes = "max_message_bytes", orchestrators, poolPeers = "pool_peers"
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        url = r.required(c, .url)
        passwordFile = r.value(c, .passwordFile) ?? passwordFile
        caFile = r.required(c, .caFile)
        certFile = r.required(c, .certFile)
        keyFile = r.required(c, .keyFile)
        prefetch = r.value(c, .prefetch) ?? prefetch
        maxMessageBytes = r.value(c, .maxMessageBytes) ?? maxMessageBytes
        orchestrators = r.value(c, .orchestrators) ?? orchestrators
        poolPeers = r.value(c, .poolPeers) ?? poolPeers
    }

    func validate(_ v: inout ConfigValidator) {
        v.range("broker.prefetch", prefetch, 1...65_535)
        v.range("broker.max_message_bytes", maxMessageBytes, 1024...(128 << 20))
        for a in poolPeers where !Patterns.matches(#"^[A-Za-z0-9_.@-]{1,64}$"#, a) {
            v.note("broker.pool_peers: \"\(TextEscaping.escaped(a))\" is not a broker account name (letters, digits, "
                   + "_ . @ -, at most 64)")
        }
    }
}

/// `[launchers]` and its `[launchers.<name>]` sections.
struct LaunchersSection: Codable, Sendable {
    /// Nothing runs unless listed.
    var enabled: [String] = []
    var envAllowed: [String] = []
    var process = ProcessSection()
    var docker = DockerSection()
    var flower = FlowerSection()
    var slurm = SlurmSection()

    enum CodingKeys: String, CodingKey {
        case enabled, envAllowed = "env_allowed", process, docker, flower, slurm
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        enabled = r.value(c, .enabled) ?? enabled
        envAllowed = r.value(c, .envAllowed) ?? envAllowed
        process = r.section(c, .process) ?? process
        docker = r.section(c, .docker) ?? docker
        flower = r.section(c, .flower) ?? flower
        slurm = r.section(c, .slurm) ?? slurm
    }
}

/// `[launchers.slurm]`: tasks as Slurm batch jobs (SlurmLauncher).
struct SlurmSection: Codable, Sendable {
    var sharedDir = ""
    var partition = ""
    var allowedPartitions: [String] = []
    var account = ""
    var allowedAccounts: [String] = []
    var qos = ""
    var allowedQOS: [String] = []
    var user = "fem-task"
    var allowedExecutables: [String] = []
    var path = "/usr/local/bin:/usr/bin:/bin"
    var maxCPUs = 2
    var defaultMemoryMB = 512
    var maxMemoryMB = 8192
    var slurmConf = ""
    var sbatch = "/usr/bin/sbatch"
    var squeue = "/usr/bin/squeue"
    var scontrol = "/usr/bin/scontrol"
    var scancel = "/usr/bin/scancel"
    var pollIntervalMS = 1000
    var unreachableSeconds = 300
    var containerRuntime = "none"
    var podman = "/usr/bin/podman"
    var allowedImages: [String] = []
    var insecureRegistries: [String] = []
    var pidsLimit = 256
    var tmpfsMB = 64

    enum CodingKeys: String, CodingKey {
        case containerRuntime = "container_runtime", podman, allowedImages = "allowed_images",
             insecureRegistries = "insecure_registries", pidsLimit = "pids_limit", tmpfsMB = "tmpfs_mb"
        case sharedDir = "shared_dir", partition, allowedPartitions = "allowed_partitions", account, qos, user,
             allowedAccounts = "allowed_accounts", allowedQOS = "allowed_qos",
             allowedExecutables = "allowed_executables", path, maxCPUs = "max_cpus",
             defaultMemoryMB = "default_memory_mb", maxMemoryMB = "max_memory_mb", slurmConf = "slurm_conf",
             sbatch, squeue, scontrol, scancel, pollIntervalMS = "poll_interval_ms",
             unreachableSeconds = "unreachable_seconds"
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        sharedDir = r.value(c, .sharedDir) ?? sharedDir
        partition = r.value(c, .partition) ?? partition
        allowedPartitions = r.value(c, .allowedPartitions) ?? allowedPartitions
        account = r.value(c, .account) ?? account
        allowedAccounts = r.value(c, .allowedAccounts) ?? allowedAccounts
        qos = r.value(c, .qos) ?? qos
        allowedQOS = r.value(c, .allowedQOS) ?? allowedQOS
        user = r.value(c, .user) ?? user
        allowedExecutables = r.value(c, .allowedExecutables) ?? allowedExecutables
        path = r.value(c, .path) ?? path
        maxCPUs = r.value(c, .maxCPUs) ?? maxCPUs
        defaultMemoryMB = r.value(c, .defaultMemoryMB) ?? defaultMemoryMB
        maxMemoryMB = r.value(c, .maxMemoryMB) ?? maxMemoryMB
        slurmConf = r.value(c, .slurmConf) ?? slurmConf
        sbatch = r.value(c, .sbatch) ?? sbatch
        squeue = r.value(c, .squeue) ?? squeue
        scontrol = r.value(c, .scontrol) ?? scontrol
        scancel = r.value(c, .scancel) ?? scancel
        pollIntervalMS = r.value(c, .pollIntervalMS) ?? pollIntervalMS
        unreachableSeconds = r.value(c, .unreachableSeconds) ?? unreachableSeconds
        containerRuntime = r.value(c, .containerRuntime) ?? containerRuntime
        podman = r.value(c, .podman) ?? podman
        allowedImages = r.value(c, .allowedImages) ?? allowedImages
        insecureRegistries = r.value(c, .insecureRegistries) ?? insecureRegistries
        pidsLimit = r.value(c, .pidsLimit) ?? pidsLimit
        tmpfsMB = r.value(c, .tmpfsMB) ?? tmpfsMB
    }

    func validate(_ v: inout ConfigValidator) {
        v.range("launchers.slurm.max_cpus", maxCPUs, 1...100_000)
        v.range("launchers.slurm.default_memory_mb", defaultMemoryMB, 6...(1 << 30))
        v.range("launchers.slurm.max_memory_mb", maxMemoryMB, 6...(1 << 30))
        v.range("launchers.slurm.poll_interval_ms", pollIntervalMS, 50...60_000)
        v.range("launchers.slurm.unreachable_seconds", unreachableSeconds, 1...86_400)
        v.range("launchers.slurm.pids_limit", pidsLimit, 16...1_000_000)
        v.range("launchers.slurm.tmpfs_mb", tmpfsMB, 1...(1 << 20))
        if !["none", "podman"].contains(containerRuntime) {
            v.note("launchers.slurm.container_runtime: \"\(containerRuntime)\" is not one of none, podman")
        }
        // Registry hosts (`host` or `host:port`) go into podman's registries.conf: a host name's characters only.
        let host = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-.:[]"))
        for registry in insecureRegistries
            where registry.isEmpty || registry.unicodeScalars.contains(where: { !host.contains($0) }) {
            v.note("launchers.slurm.insecure_registries: \"\(registry)\" is not a registry host (host or host:port)")
        }
        // Names go into sbatch options: Slurm's own character set only.
        let plain = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_."))
        let names = [("partition", partition), ("account", account), ("qos", qos)]
            + allowedPartitions.map { ("allowed_partitions", $0) } + allowedAccounts.map { ("allowed_accounts", $0) }
            + allowedQOS.map { ("allowed_qos", $0) }
        for (key, value) in names
            where value.unicodeScalars.contains(where: { !plain.contains($0) }) || value.hasPrefix("-") {
            v.note("launchers.slurm.\(key): \"\(value)\" is not a Slurm name (letters, digits, - _ . only)")
        }
        for (key, value) in [("sbatch", sbatch), ("squeue", squeue), ("scontrol", scontrol), ("scancel", scancel),
                             ("podman", podman)]
            where !value.hasPrefix("/") {
            v.note("launchers.slurm.\(key): \"\(value)\" must be an absolute path")
        }
    }
}

/// `[launchers.process]`.
struct ProcessSection: Codable, Sendable {
    var allowedExecutables: [String] = []
    var path = "/usr/local/bin:/usr/bin:/bin"
    var user = "fem-task"
    var allowUnconfined = false
    var allowHostNetwork = false
    var pidsLimit = 256
    var openFiles = 1024
    var defaultMemoryMB = 512
    var maxMemoryMB = 8192
    var maxCPUs = 2

    enum CodingKeys: String, CodingKey {
        case allowedExecutables = "allowed_executables", path, user, allowUnconfined = "allow_unconfined",
             allowHostNetwork = "allow_host_network", pidsLimit = "pids_limit", openFiles = "open_files",
             defaultMemoryMB = "default_memory_mb", maxMemoryMB = "max_memory_mb", maxCPUs = "max_cpus"
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        allowedExecutables = r.value(c, .allowedExecutables) ?? allowedExecutables
        path = r.value(c, .path) ?? path
        user = r.value(c, .user) ?? user
        allowUnconfined = r.value(c, .allowUnconfined) ?? allowUnconfined
        allowHostNetwork = r.value(c, .allowHostNetwork) ?? allowHostNetwork
        pidsLimit = r.value(c, .pidsLimit) ?? pidsLimit
        openFiles = r.value(c, .openFiles) ?? openFiles
        defaultMemoryMB = r.value(c, .defaultMemoryMB) ?? defaultMemoryMB
        maxMemoryMB = r.value(c, .maxMemoryMB) ?? maxMemoryMB
        maxCPUs = r.value(c, .maxCPUs) ?? maxCPUs
    }

    func validate(_ v: inout ConfigValidator) {
        v.range("launchers.process.pids_limit", pidsLimit, 16...1_000_000)
        v.range("launchers.process.open_files", openFiles, 64...1_048_576)
        v.range("launchers.process.default_memory_mb", defaultMemoryMB, 6...(1 << 20))
        v.range("launchers.process.max_memory_mb", maxMemoryMB, 6...(1 << 20))
        v.range("launchers.process.max_cpus", maxCPUs, 1...1024)
    }
}

/// `[launchers.docker]`.
struct DockerSection: Codable, Sendable {
    var socket = "/var/run/docker.sock"
    var allowedImages: [String] = []
    var user = "65534:65534"
    var pidsLimit = 256
    var defaultMemoryMB = 512
    var maxMemoryMB = 8192
    var maxCPUs = 2
    var tmpfsMB = 64
    var allowHostNetwork = false
    var allowGPUs = false
    var waitForDaemonSeconds = 60

    enum CodingKeys: String, CodingKey {
        case socket, allowedImages = "allowed_images", user, pidsLimit = "pids_limit",
             defaultMemoryMB = "default_memory_mb", maxMemoryMB = "max_memory_mb", maxCPUs = "max_cpus",
             tmpfsMB = "tmpfs_mb", allowHostNetwork = "allow_host_network", allowGPUs = "allow_gpus",
             waitForDaemonSeconds = "wait_for_daemon_seconds"
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        socket = r.value(c, .socket) ?? socket
        allowedImages = r.value(c, .allowedImages) ?? allowedImages
        user = r.value(c, .user) ?? user
        pidsLimit = r.value(c, .pidsLimit) ?? pidsLimit
        defaultMemoryMB = r.value(c, .defaultMemoryMB) ?? defaultMemoryMB
        maxMemoryMB = r.value(c, .maxMemoryMB) ?? maxMemoryMB
        maxCPUs = r.value(c, .maxCPUs) ?? maxCPUs
        tmpfsMB = r.value(c, .tmpfsMB) ?? tmpfsMB
        allowHostNetwork = r.value(c, .allowHostNetwork) ?? allowHostNetwork
        allowGPUs = r.value(c, .allowGPUs) ?? allowGPUs
        waitForDaemonSeconds = r.value(c, .waitForDaemonSeconds) ?? waitForDaemonSeconds
    }

    func validate(_ v: inout ConfigValidator) {
        v.range("launchers.docker.pids_limit", pidsLimit, 16...1_000_000)
        v.range("launchers.docker.default_memory_mb", defaultMemoryMB, 6...(1 << 20))
        v.range("launchers.docker.max_memory_mb", maxMemoryMB, 6...(1 << 20))
        v.range("launchers.docker.max_cpus", maxCPUs, 1...1024)
        v.range("launchers.docker.tmpfs_mb", tmpfsMB, 1...(1 << 20))
        v.range("launchers.docker.wait_for_daemon_seconds", waitForDaemonSeconds, 0...86_400)
    }
}

/// `[launchers.flower]`.
struct FlowerSection: Codable, Sendable {
    var python = "/usr/bin/python3"
    var allowedSuperlinks: [String] = []
    var allowSourceBuilds = false
    /// "": `<work_dir>/venvs`.
    var venvDir = ""
    var wheelDir = ""
    var allowInsecure = false
    var rootCertificates = ""
    var connectAttempts = 10
    var retryDelayMS = 1000
    var unreachableSeconds = 120
    var user = "fem-task"
    var allowUnconfined = false
    var pidsLimit = 1024
    var openFiles = 4096
    var defaultMemoryMB = 2048
    var maxMemoryMB = 8192
    var maxCPUs = 2

    enum CodingKeys: String, CodingKey {
        case python, allowedSuperlinks = "allowed_superlinks", allowSourceBuilds = "allow_source_builds",
             venvDir = "venv_dir", wheelDir = "wheel_dir", allowInsecure = "allow_insecure",
             rootCertificates = "root_certificates", connectAttempts = "connect_attempts", retryDelayMS = "retry_delay_ms",
             unreachableSeconds = "unreachable_seconds", user, allowUnconfined = "allow_unconfined",
             pidsLimit = "pids_limit", openFiles = "open_files", defaultMemoryMB = "default_memory_mb",
             maxMemoryMB = "max_memory_mb", maxCPUs = "max_cpus"
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        python = r.value(c, .python) ?? python
        allowedSuperlinks = r.value(c, .allowedSuperlinks) ?? allowedSuperlinks
        allowSourceBuilds = r.value(c, .allowSourceBuilds) ?? allowSourceBuilds
        venvDir = r.value(c, .venvDir) ?? venvDir
        wheelDir = r.value(c, .wheelDir) ?? wheelDir
        allowInsecure = r.value(c, .allowInsecure) ?? allowInsecure
        rootCertificates = r.value(c, .rootCertificates) ?? rootCertificates
        connectAttempts = r.value(c, .connectAttempts) ?? connectAttempts
        retryDelayMS = r.value(c, .retryDelayMS) ?? retryDelayMS
        unreachableSeconds = r.value(c, .unreachableSeconds) ?? unreachableSeconds
        user = r.value(c, .user) ?? user
        allowUnconfined = r.value(c, .allowUnconfined) ?? allowUnconfined
        pidsLimit = r.value(c, .pidsLimit) ?? pidsLimit
        openFiles = r.value(c, .openFiles) ?? openFiles
        defaultMemoryMB = r.value(c, .defaultMemoryMB) ?? defaultMemoryMB
        maxMemoryMB = r.value(c, .maxMemoryMB) ?? maxMemoryMB
        maxCPUs = r.value(c, .maxCPUs) ?? maxCPUs
    }

    func validate(_ v: inout ConfigValidator) {
        v.range("launchers.flower.connect_attempts", connectAttempts, 1...100)
        v.range("launchers.flower.retry_delay_ms", retryDelayMS, 0...600_000)
        v.range("launchers.flower.unreachable_seconds", unreachableSeconds, 1...86_400)
        v.range("launchers.flower.pids_limit", pidsLimit, 16...1_000_000)
        v.range("launchers.flower.open_files", openFiles, 64...1_048_576)
        v.range("launchers.flower.default_memory_mb", defaultMemoryMB, 6...(1 << 20))
        v.range("launchers.flower.max_memory_mb", maxMemoryMB, 6...(1 << 20))
        v.range("launchers.flower.max_cpus", maxCPUs, 1...1024)
    }
}

/// `[stage_in]`.
struct StageInSection: Codable, Sendable {
    var gitAllowedURLs: [String] = []
    var fileAllowedURLs: [String] = []
    var maxFileMB = 1024
    var requireSHA256 = true
    var caFile = ""
    var retries = 4
    var retryDelayMS = 1000

    enum CodingKeys: String, CodingKey {
        case gitAllowedURLs = "git_allowed_urls", fileAllowedURLs = "file_allowed_urls", maxFileMB = "max_file_mb",
             requireSHA256 = "require_sha256", caFile = "ca_file", retries, retryDelayMS = "retry_delay_ms"
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        gitAllowedURLs = r.value(c, .gitAllowedURLs) ?? gitAllowedURLs
        fileAllowedURLs = r.value(c, .fileAllowedURLs) ?? fileAllowedURLs
        maxFileMB = r.value(c, .maxFileMB) ?? maxFileMB
        requireSHA256 = r.value(c, .requireSHA256) ?? requireSHA256
        caFile = r.value(c, .caFile) ?? caFile
        retries = r.value(c, .retries) ?? retries
        retryDelayMS = r.value(c, .retryDelayMS) ?? retryDelayMS
    }

    func validate(_ v: inout ConfigValidator) {
        v.range("stage_in.max_file_mb", maxFileMB, 1...(1 << 20))
        v.range("stage_in.retries", retries, 1...20)
        v.range("stage_in.retry_delay_ms", retryDelayMS, 0...600_000)
    }
}

/// `[sandboxes]`: hours a finished task's sandbox is kept.
struct SandboxesSection: Codable, Sendable {
    var keepCompletedHours = 24
    var keepFailedHours = 168

    enum CodingKeys: String, CodingKey {
        case keepCompletedHours = "keep_completed_hours", keepFailedHours = "keep_failed_hours"
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        keepCompletedHours = r.value(c, .keepCompletedHours) ?? keepCompletedHours
        keepFailedHours = r.value(c, .keepFailedHours) ?? keepFailedHours
    }

    func validate(_ v: inout ConfigValidator) {
        v.range("sandboxes.keep_completed_hours", keepCompletedHours, 0...87_600)
        v.range("sandboxes.keep_failed_hours", keepFailedHours, 0...87_600)
    }
}

/// `[outputs]`.
struct OutputsSection: Codable, Sendable {
    var maxFileBytes = 1 << 30
    var maxTaskBytes = 4 << 30
    var allowedURLs: [String] = []
    var requireApproval = false
    var holdLogs = true
    var caFile = ""
    var retries = 5
    var retryDelayMS = 1000
    /// `[outputs.checks]`.
    var checks = OutputChecksSection()

    enum CodingKeys: String, CodingKey {
        case maxFileBytes = "max_file_bytes", maxTaskBytes = "max_task_bytes", allowedURLs = "allowed_urls",
             requireApproval = "require_approval", holdLogs = "hold_logs", caFile = "ca_file", retries,
             retryDelayMS = "retry_delay_ms"
        case checks
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        maxFileBytes = r.value(c, .maxFileBytes) ?? maxFileBytes
        maxTaskBytes = r.value(c, .maxTaskBytes) ?? maxTaskBytes
        allowedURLs = r.value(c, .allowedURLs) ?? allowedURLs
        requireApproval = r.value(c, .requireApproval) ?? requireApproval
        holdLogs = r.value(c, .holdLogs) ?? holdLogs
        caFile = r.value(c, .caFile) ?? caFile
        retries = r.value(c, .retries) ?? retries
        retryDelayMS = r.value(c, .retryDelayMS) ?? retryDelayMS
        checks = r.section(c, .checks) ?? checks
    }

    func validate(_ v: inout ConfigValidator) {
        v.range("outputs.max_file_bytes", maxFileBytes, 1...Int.max)
        v.range("outputs.max_task_bytes", maxTaskBytes, 1...Int.max)
        v.range("outputs.retries", retries, 1...50)
        v.range("outputs.retry_delay_ms", retryDelayMS, 0...600_000)
        checks.validate(&v, requireApproval: requireApproval)
    }
}

/// `[outputs.checks]`: disclosure checks run over a task's outputs when they are collected (before the airlock).
struct OutputChecksSection: Codable, Sendable {
    var minCellCount = OutputCheckSettings().minCellCount
    var countColumns = OutputCheckSettings().countColumns
    var fileTypes = OutputCheckSettings().fileTypes
    var blockOnFindings = OutputCheckSettings().blockOnFindings

    enum CodingKeys: String, CodingKey {
        case minCellCount = "min_cell_count", countColumns = "count_columns", fileTypes = "file_types",
             blockOnFindings = "block_on_findings"
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        minCellCount = r.value(c, .minCellCount) ?? minCellCount
        countColumns = r.value(c, .countColumns) ?? countColumns
        fileTypes = r.value(c, .fileTypes) ?? fileTypes
        blockOnFindings = r.value(c, .blockOnFindings) ?? blockOnFindings
    }

    var settings: OutputCheckSettings {
        var s = OutputCheckSettings()
        s.minCellCount = minCellCount
        s.countColumns = countColumns
        s.fileTypes = fileTypes
        s.blockOnFindings = blockOnFindings
        return s
    }

    func validate(_ v: inout ConfigValidator, requireApproval: Bool) {
        v.range("outputs.checks.min_cell_count", minCellCount, 0...1_000_000)
        for (i, p) in countColumns.enumerated() where !Patterns.matches(Patterns.countColumn, p) {
            v.note("outputs.checks.count_columns[\(i)]: must be a column name pattern of 1 to 128 characters "
                      + "without control characters")
        }
        if blockOnFindings && !requireApproval {
            v.note("outputs.checks.block_on_findings = true needs outputs.require_approval = true: without the "
                      + "airlock there is no approval to block")
        }
    }
}

/// `[journal]`.
struct JournalSection: Codable, Sendable {
    var keepDays = 30

    enum CodingKeys: String, CodingKey {
        case keepDays = "keep_days"
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        keepDays = ConfigReading.of(decoder).value(c, .keepDays) ?? keepDays
    }

    func validate(_ v: inout ConfigValidator) {
        v.range("journal.keep_days", keepDays, 1...36_500)
    }
}

/// `[reporter]`: caps on the events a tool's reports cause, per task.
struct ReporterSection: Codable, Sendable {
    var maxEventsPerTask = 1000
    var maxEventBytesPerTask = 1 << 20
    var maxMetricsPerLine = 32

    enum CodingKeys: String, CodingKey {
        case maxEventsPerTask = "max_events_per_task", maxEventBytesPerTask = "max_event_bytes_per_task",
             maxMetricsPerLine = "max_metrics_per_line"
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        maxEventsPerTask = r.value(c, .maxEventsPerTask) ?? maxEventsPerTask
        maxEventBytesPerTask = r.value(c, .maxEventBytesPerTask) ?? maxEventBytesPerTask
        maxMetricsPerLine = r.value(c, .maxMetricsPerLine) ?? maxMetricsPerLine
    }

    func validate(_ v: inout ConfigValidator) {
        v.range("reporter.max_events_per_task", maxEventsPerTask, 1...10_000_000)
        v.range("reporter.max_event_bytes_per_task", maxEventBytesPerTask, 1024...(1 << 30))
        v.range("reporter.max_metrics_per_line", maxMetricsPerLine, 1...1000)
    }
}

/// `[metrics]`: Prometheus metrics on `GET /metrics`, off unless `listen` is set. Served without authentication, so
/// on loopback unless `allow_remote` says otherwise.
struct MetricsSection: Codable, Sendable {
    var listen = ""
    var allowRemote = false

    enum CodingKeys: String, CodingKey {
        case listen, allowRemote = "allow_remote"
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        listen = r.value(c, .listen) ?? listen
        allowRemote = r.value(c, .allowRemote) ?? allowRemote
    }

    func validate(_ v: inout ConfigValidator) {
        guard !listen.isEmpty else { return }
        do {
            let address = try MetricsListen.parse(listen)
            if !address.isLoopback && !allowRemote {
                v.note("metrics.listen: \(address) is not a loopback address: the metrics would be served without "
                       + "authentication to whoever can reach it; set metrics.allow_remote = true to allow that (and "
                       + "limit who may connect with a firewall), or listen on 127.0.0.1")
            }
        } catch {
            v.note("metrics.listen: \(error)")
        }
    }
}

/// `[trust]`: the node's own word on which plans may run (docs/security.md, "Signed plans"): the authors' keys it
/// trusts and whether a plan must be signed by one of them. More trust keys go here as properties.
struct TrustSection: Codable, Sendable {
    var requireSignedPlans = false
    /// Only plans whose canonical hash an administrator approved (`fem-client tools approve`) run.
    var requireApprovedTools = false
    /// `[trust.keys.<name>]`: the public keys of the authors this node trusts, by a name of the site's choosing.
    var keys: [String: TrustKeyEntry] = [:]

    enum CodingKeys: String, CodingKey {
        case requireSignedPlans = "require_signed_plans", requireApprovedTools = "require_approved_tools", keys
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        requireSignedPlans = r.value(c, .requireSignedPlans) ?? requireSignedPlans
        requireApprovedTools = r.value(c, .requireApprovedTools) ?? requireApprovedTools
        guard c.contains(.keys) else { return }
        r.markKnown("trust.keys")  // each entry names its own unknown keys
        guard let t = try? c.nestedContainer(keyedBy: NameKey.self, forKey: .keys) else {
            r.note("trust.keys: expected [trust.keys.<name>] sections with public_key or public_key_file")
            return
        }
        for name in t.allKeys {
            guard (try? t.nestedContainer(keyedBy: NameKey.self, forKey: name)) != nil else {
                r.note("trust.keys.\(name.stringValue): expected a table with public_key or public_key_file")
                continue
            }
            do {
                keys[name.stringValue] = try t.decode(TrustKeyEntry.self, forKey: name)
            } catch {
                r.note(r.describe(error, expected: "a table"))
            }
        }
    }

    /// Every key parsed: names, exactly one source each, an Ed25519 public key, no key id twice, and a key at all
    /// when signatures are required.
    func validate(_ v: inout ConfigValidator) {
        let keys = resolve(&v)
        if requireSignedPlans && self.keys.isEmpty {
            v.note("trust.require_signed_plans: is true but no [trust.keys.<name>] is configured, so no plan could run; "
                   + "add the public keys of the authors you trust (fem-client keys generate prints the lines)")
        }
        var byID: [String: String] = [:]
        for key in keys {
            if let other = byID[key.keyID] {
                v.note("trust.keys.\(key.name): has the same key (key id \(key.keyID)) as trust.keys.\(other); list a "
                       + "key once")
            } else {
                byID[key.keyID] = key.name
            }
        }
    }

    /// The trusted keys that parse (the others are noted in `v`), sorted by name.
    func resolve(_ v: inout ConfigValidator) -> [TrustedKey] {
        var out: [TrustedKey] = []
        for (name, entry) in keys.sorted(by: { $0.key < $1.key }) {
            let at = "trust.keys.\(name)"
            guard Patterns.matches(#"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"#, name) else {
                v.note("trust.keys: \"\(TextEscaping.escaped(name))\" is not a key name (letters, digits, . _ -, at "
                       + "most 64)")
                continue
            }
            for k in entry.keys where !TrustKeyEntry.allowed.contains(k) {
                v.note("\(at).\(k): is not a known key (\(TrustKeyEntry.allowed.joined(separator: ", ")))")
            }
            let given = TrustKeyEntry.allowed.filter { entry.keys.contains($0) }
            guard given.count == 1 else {
                v.note("\(at): needs exactly one of public_key (the base64 of the SPKI DER, the body of its -----BEGIN "
                       + "PUBLIC KEY----- file) or public_key_file")
                continue
            }
            let raw: [UInt8]
            if let text = entry.publicKey {
                do {
                    raw = try SigningKeys.publicKey(text: text)
                } catch {
                    v.note("\(at).public_key: \(error)")
                    continue
                }
            } else if let file = entry.publicKeyFile {
                do {
                    raw = try SigningKeys.readPublicKey(NodeConfig.absolutePath(file))
                } catch {
                    v.note("\(at).public_key_file: \(error)")
                    continue
                }
            } else {
                continue  // not a string: already named
            }
            out.append(TrustedKey(name: name, publicKey: raw))
        }
        return out
    }

    /// The running form (after `validate` found no problem).
    var config: TrustConfig {
        var ignored = ConfigValidator()
        return TrustConfig(requireSignedPlans: requireSignedPlans, keys: resolve(&ignored))
    }
}

/// `[trust.keys.<name>]`.
struct TrustKeyEntry: Codable, Sendable {
    static let allowed = ["public_key", "public_key_file"]
    var publicKey: String?
    var publicKeyFile: String?
    /// Every key the entry's table has, for naming unknown ones.
    var keys: [String] = []

    enum CodingKeys: String, CodingKey {
        case publicKey = "public_key", publicKeyFile = "public_key_file"
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        let at = ConfigReading.name(decoder.codingPath)
        keys = try decoder.container(keyedBy: NameKey.self).allKeys.map(\.stringValue)
        publicKey = r.value(c, .publicKey, display: "\(at).public_key")
        publicKeyFile = r.value(c, .publicKeyFile, display: "\(at).public_key_file")
    }
}

/// `[trust]` as the node runs with it.
public struct TrustConfig: Sendable, Equatable {
    public var requireSignedPlans = false
    public var keys: [TrustedKey] = []

    public init(requireSignedPlans: Bool = false, keys: [TrustedKey] = []) {
        self.requireSignedPlans = requireSignedPlans
        self.keys = keys
    }
}

/// `[console]`: the steward's web console (docs/console.md), off unless `listen` is set. Accounts are
/// `[console.accounts.<name>]` with a bcrypt `password_hash` and a `role` (`viewer` or `steward`).
struct ConsoleSection: Codable, Sendable {
    struct Account: Codable, Sendable {
        var passwordHash: String?
        var role: String?

        enum CodingKeys: String, CodingKey {
            case passwordHash = "password_hash", role
        }
    }

    var listen = ""
    var tls = false
    var tlsCertFile = ""
    var tlsKeyFile = ""
    var sessionMinutes = 30
    var accounts: [String: Account] = [:]

    enum CodingKeys: String, CodingKey {
        case listen, tls, tlsCertFile = "tls_cert_file", tlsKeyFile = "tls_key_file", sessionMinutes = "session_minutes",
             accounts
    }

    init() {}

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        listen = r.value(c, .listen) ?? listen
        tls = r.value(c, .tls) ?? tls
        tlsCertFile = r.value(c, .tlsCertFile) ?? tlsCertFile
        tlsKeyFile = r.value(c, .tlsKeyFile) ?? tlsKeyFile
        sessionMinutes = r.value(c, .sessionMinutes) ?? sessionMinutes
        guard c.contains(.accounts) else { return }
        guard let table = try? c.nestedContainer(keyedBy: NameKey.self, forKey: .accounts) else {
            r.note("console.accounts: expected [console.accounts.<name>] sections")
            r.markKnown("console.accounts")
            return
        }
        for name in table.allKeys {
            let at = "console.accounts.\(name.stringValue)"
            guard let entry = try? table.nestedContainer(keyedBy: Account.CodingKeys.self, forKey: name) else {
                r.note("\(at): expected a table with password_hash and role")
                r.markKnown(at)
                continue
            }
            accounts[name.stringValue] = Account(passwordHash: r.value(entry, .passwordHash, display: "\(at).password_hash"),
                                                 role: r.value(entry, .role, display: "\(at).role"))
        }
    }

    func validate(_ v: inout ConfigValidator) {
        v.range("console.session_minutes", sessionMinutes, 1...1440)
        if tlsCertFile.isEmpty != tlsKeyFile.isEmpty {
            v.note("console.tls_cert_file, console.tls_key_file: set both (or neither, to use the broker's cert_file and "
                   + "key_file)")
        }
        for (name, account) in accounts.sorted(by: { $0.key < $1.key }) {
            let at = "console.accounts.\(name)"
            if !ConsoleSettings.isAccountName(name) {
                v.note("console.accounts: \"\(TextEscaping.escaped(name))\" is not an account name (letters, digits, "
                       + "_ . @ -, at most 64)")
            }
            if let hash = account.passwordHash {
                if !ConsoleSettings.isBcryptHash(hash) {
                    // Never the value: it may be a password pasted by mistake.
                    v.note("\(at).password_hash: is not a bcrypt hash ($2b$ or $2a$, cost 04-31, 60 characters); make "
                           + "one with `fem-client console hash-password`")
                }
            } else {
                v.note("\(at).password_hash: is required (make one with `fem-client console hash-password`)")
            }
            if let role = account.role {
                if ConsoleSettings.Role(rawValue: role) == nil {
                    v.note("\(at).role: \"\(TextEscaping.escaped(role))\" is not a role (viewer or steward)")
                }
            } else {
                v.note("\(at).role: is required (viewer or steward)")
            }
        }
        guard !listen.isEmpty else { return }
        do {
            let address = try MetricsListen.parse(listen)
            if !address.isLoopback && !tls {
                v.note("console.listen: \(address) is not a loopback address: the console's passwords and session "
                       + "cookies would cross the network in clear; set console.tls = true, or listen on 127.0.0.1")
            }
        } catch {
            v.note("console.listen: \(error)")
        }
        if accounts.isEmpty {
            v.note("console.accounts: none, so nobody could log in to the console; add [console.accounts.<name>] "
                   + "with password_hash and role")
        }
    }

    /// What the daemon serves, once validated (nil: the console is off).
    func settings(brokerCert: String, brokerKey: String, resolve: (String) -> String) -> ConsoleSettings? {
        guard !listen.isEmpty, let address = try? MetricsListen.parse(listen) else { return nil }
        var list: [String: ConsoleSettings.Account] = [:]
        for (name, a) in accounts {
            guard let hash = a.passwordHash, let role = a.role.flatMap(ConsoleSettings.Role.init) else { continue }
            list[name] = .init(passwordHash: hash, role: role)
        }
        let cert = tlsCertFile.isEmpty ? brokerCert : resolve(tlsCertFile)
        let key = tlsKeyFile.isEmpty ? brokerKey : resolve(tlsKeyFile)
        return ConsoleSettings(listen: address, tls: tls ? .init(certFile: cert, keyFile: key) : nil,
                               sessionMinutes: sessionMinutes, accounts: list)
    }
}

/// `[registries."host:port"]` (username and password) or `[credentials."name"]` (username and password for basic, or
/// a token for bearer, and the URLs it may be sent to). Only where the secret is kept: a file or a variable.
struct LoginEntry: Codable, Sendable {
    var username: String?
    var passwordFile: String?
    var passwordEnv: String?
    var tokenFile: String?
    var tokenEnv: String?
    var urls: [String]?
    /// Every key the entry's table has, for naming unknown ones.
    var keys: [String] = []
    /// Where messages point: `credentials."git"`.
    var at = ""

    enum CodingKeys: String, CodingKey {
        case username, passwordFile = "password_file", passwordEnv = "password_env", tokenFile = "token_file",
             tokenEnv = "token_env", urls
    }

    static func secretKeys(tokens: Bool) -> [String] {
        ["password_file", "password_env"] + (tokens ? ["token_file", "token_env"] : [])
    }

    /// Node credentials name where they may be sent; a registry login goes only to its own registry.
    static func allowed(tokens: Bool) -> [String] { ["username"] + secretKeys(tokens: tokens) + (tokens ? ["urls"] : []) }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        let path = decoder.codingPath.map(\.stringValue)
        at = path.count == 2 ? "\(path[0]).\"\(path[1])\"" : path.joined(separator: ".")
        keys = try decoder.container(keyedBy: NameKey.self).allKeys.map(\.stringValue)
        let at = self.at
        username = r.value(c, .username, display: "\(at).username")
        passwordFile = r.value(c, .passwordFile, display: "\(at).password_file")
        passwordEnv = r.value(c, .passwordEnv, display: "\(at).password_env")
        tokenFile = r.value(c, .tokenFile, display: "\(at).token_file")
        tokenEnv = r.value(c, .tokenEnv, display: "\(at).token_env")
        urls = r.value(c, .urls, display: "\(at).urls")
    }
}

/// `[datasets.<id>]`: a host folder tasks may mount read-only, with labels plans may match.
struct DatasetEntry: Codable, Sendable {
    var path: String?
    var labels: [String: String] = [:]
    var keys: [String] = []

    enum CodingKeys: String, CodingKey {
        case path, labels
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let r = ConfigReading.of(decoder)
        let at = ConfigReading.name(decoder.codingPath)
        keys = try decoder.container(keyedBy: NameKey.self).allKeys.map(\.stringValue)
        path = r.value(c, .path, display: "\(at).path")
        guard c.contains(.labels) else { return }
        guard let l = try? c.nestedContainer(keyedBy: NameKey.self, forKey: .labels) else {
            r.note("\(at).labels: expected a table of strings")
            return
        }
        // A label's value is text; numbers and booleans are taken as written.
        for key in l.allKeys {
            if let s = try? l.decode(String.self, forKey: key) {
                labels[key.stringValue] = s
            } else if let i = try? l.decode(Int.self, forKey: key) {
                labels[key.stringValue] = "\(i)"
            } else if let b = try? l.decode(Bool.self, forKey: key) {
                labels[key.stringValue] = "\(b)"
            } else if let d = try? l.decode(Double.self, forKey: key) {
                labels[key.stringValue] = "\(d)"
            } else {
                r.note("\(at).labels.\(key.stringValue): expected a string")
            }
        }
    }
}
