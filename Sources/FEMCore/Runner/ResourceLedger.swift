import Foundation

/// An amount of the node's resources: its whole capacity, what is free, or what one task reserves.
public struct Capacity: Sendable, Equatable, Codable {
    public var cpus: Double
    public var memoryMB: Int
    public var gpus: Int
    public var storageMB: Int

    public init(cpus: Double, memoryMB: Int, gpus: Int, storageMB: Int) {
        self.cpus = cpus
        self.memoryMB = memoryMB
        self.gpus = gpus
        self.storageMB = storageMB
    }

    public static let zero = Capacity(cpus: 0, memoryMB: 0, gpus: 0, storageMB: 0)
    /// No practical limit (a runner built without a capacity, as in tests).
    public static let unlimited = Capacity(cpus: 1_000_000, memoryMB: Int(Int32.max), gpus: Int(Int32.max),
                                           storageMB: Int(Int32.max))

    /// What a task's `resources` reserve. A field the plan leaves out counts as 0 (cpus included): such a task is
    /// limited only by `max_concurrent_tasks`, as before the node had a capacity; an author who wants the node to
    /// queue the task until it fits declares what it needs.
    public init(_ resources: Resources) {
        self.init(cpus: resources.cpus ?? 0, memoryMB: resources.memoryMB ?? 0, gpus: resources.gpus ?? 0,
                  storageMB: resources.storageMB ?? 0)
    }

    enum CodingKeys: String, CodingKey {
        case cpus
        case memoryMB = "memory_mb"
        case gpus
        case storageMB = "storage_mb"
    }

    public var json: JSONValue {
        .object(["cpus": .double(cpus), "memory_mb": .int(Int64(memoryMB)), "gpus": .int(Int64(gpus)),
                 "storage_mb": .int(Int64(storageMB))])
    }
}

/// Whether a task's resources can start now on this node (`Runner.admission(for:)`).
public enum ResourceAdmission: Sendable, Equatable {
    /// They fit what is free, a slot is free and nothing waits before them.
    case fitsNow
    /// They fit the node, not now: the task would wait in `queued`.
    case mustWait
    /// They can never fit this node: the reason names the resource and both amounts.
    case never(String)
}

/// The node's capacity and what running tasks reserve of it. Pure: the Runner asks it and tells it what starts and
/// ends; it knows nothing of tasks beyond their ids.
public struct ResourceLedger: Sendable, Equatable {
    public let capacity: Capacity
    public private(set) var reservations: [String: Capacity] = [:]

    /// Fractional CPUs add up in floating point: 0.1 + 0.2 must still fit 0.3.
    static let epsilon = 1e-9

    public init(capacity: Capacity) {
        self.capacity = capacity
    }

    /// The sum of every reservation.
    public var reserved: Capacity {
        reservations.values.reduce(into: Capacity.zero) { sum, r in
            sum.cpus += r.cpus
            sum.memoryMB += r.memoryMB
            sum.gpus += r.gpus
            sum.storageMB += r.storageMB
        }
    }

    /// Capacity minus reservations, never below 0 (a re-attached task may hold more than a smaller new capacity).
    public var free: Capacity {
        let r = reserved
        let cpus = capacity.cpus - r.cpus
        return Capacity(cpus: cpus < Self.epsilon ? 0 : cpus, memoryMB: max(0, capacity.memoryMB - r.memoryMB),
                        gpus: max(0, capacity.gpus - r.gpus), storageMB: max(0, capacity.storageMB - r.storageMB))
    }

    /// Why these resources can never fit this node (every resource over its capacity, e.g.
    /// `resources.memory_mb: 64000 requested, the node has 16000`), or nil when they can.
    public func neverFits(_ resources: Resources) -> String? {
        let want = Capacity(resources)
        var problems: [String] = []
        if want.cpus > capacity.cpus + Self.epsilon {
            problems.append("resources.cpus: \(Self.amount(want.cpus)) requested, the node has \(Self.amount(capacity.cpus))")
        }
        if want.memoryMB > capacity.memoryMB {
            problems.append("resources.memory_mb: \(want.memoryMB) requested, the node has \(capacity.memoryMB)")
        }
        if want.gpus > capacity.gpus {
            problems.append("resources.gpus: \(want.gpus) requested, the node has \(capacity.gpus)")
        }
        if want.storageMB > capacity.storageMB {
            problems.append("resources.storage_mb: \(want.storageMB) requested, the node has \(capacity.storageMB)")
        }
        return problems.isEmpty ? nil : problems.joined(separator: "; ")
    }

    /// What these resources wait for now (e.g. `4 CPUs (2 free of 8)`), or nil when they fit what is free.
    public func shortfall(_ resources: Resources) -> String? {
        let want = Capacity(resources)
        let free = self.free
        var short: [String] = []
        if want.cpus > free.cpus + Self.epsilon {
            short.append("\(Self.amount(want.cpus)) CPUs (\(Self.amount(free.cpus)) free of \(Self.amount(capacity.cpus)))")
        }
        if want.memoryMB > free.memoryMB {
            short.append("\(want.memoryMB) MB of memory (\(free.memoryMB) free of \(capacity.memoryMB))")
        }
        if want.gpus > free.gpus {
            short.append("\(want.gpus) GPUs (\(free.gpus) free of \(capacity.gpus))")
        }
        if want.storageMB > free.storageMB {
            short.append("\(want.storageMB) MB of storage (\(free.storageMB) free of \(capacity.storageMB))")
        }
        return short.isEmpty ? nil : short.joined(separator: ", ")
    }

    /// Resources alone: never, must wait, or fit now (slots and the queue are the Runner's to add).
    public func admission(for resources: Resources) -> ResourceAdmission {
        if let why = neverFits(resources) { return .never(why) }
        return shortfall(resources) == nil ? .fitsNow : .mustWait
    }

    /// Reserves a task's resources (replacing what it held). It does not check that they fit: a task re-attached
    /// after a restart holds what it runs with, whatever is free.
    public mutating func reserve(_ taskID: String, _ resources: Resources) {
        reservations[taskID] = Capacity(resources)
    }

    /// Gives a task's reservation back; false when it held none.
    @discardableResult
    public mutating func release(_ taskID: String) -> Bool {
        reservations.removeValue(forKey: taskID) != nil
    }

    /// `4`, `0.5`: a whole number without its `.0`.
    static func amount(_ value: Double) -> String {
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }
}
