import Foundation

/// One node attribute's value: what a constraint expression compares against.
public enum AttributeValue: Sendable, Equatable, Codable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case list([AttributeValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let b = try? c.decode(Bool.self) { self = .bool(b); return }
        if let d = try? c.decode(Double.self) { self = .number(d); return }
        if let s = try? c.decode(String.self) { self = .string(s); return }
        self = .list(try c.decode([AttributeValue].self))
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .number(let d):
            if d.rounded() == d, abs(d) < 1e15 { try c.encode(Int64(d)) } else { try c.encode(d) }
        case .bool(let b): try c.encode(b)
        case .list(let l): try c.encode(l)
        }
    }

    /// The value as JSON (for heartbeats and events).
    public var jsonValue: JSONValue {
        switch self {
        case .string(let s): .string(s)
        case .number(let d): d.rounded() == d && abs(d) < 1e15 ? .int(Int64(d)) : .double(d)
        case .bool(let b): .bool(b)
        case .list(let l): .array(l.map(\.jsonValue))
        }
    }

    /// The value from JSON; nil for null, objects, and lists holding them.
    public init?(json: JSONValue) {
        switch json {
        case .string(let s): self = .string(s)
        case .int(let i): self = .number(Double(i))
        case .double(let d): self = .number(d)
        case .bool(let b): self = .bool(b)
        case .array(let a):
            var items: [AttributeValue] = []
            for item in a {
                guard let v = AttributeValue(json: item) else { return nil }
                items.append(v)
            }
            self = .list(items)
        case .null, .object: return nil
        }
    }
}

/// What a node is: the values constraint expressions are evaluated over. Keys are attribute paths such as `cpus`,
/// `memory_mb`, `gpus`, `gpu_model`, `disk_free_mb`, `os`, `os_version`, `arch`, `kernel`, `version`, `launchers`,
/// `datasets` and `labels.<key>`. Encodes as a flat JSON object.
public struct NodeAttributes: Sendable, Equatable, Codable {
    public var values: [String: AttributeValue]

    public init(_ values: [String: AttributeValue] = [:]) { self.values = values }

    public subscript(path: String) -> AttributeValue? {
        get { values[path] }
        set { values[path] = newValue }
    }

    public init(from decoder: Decoder) throws {
        values = try decoder.singleValueContainer().decode([String: AttributeValue].self)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(values)
    }

    /// The attributes as one JSON object.
    public var jsonValue: JSONValue { .object(values.mapValues(\.jsonValue)) }
}
