import Foundation
import TOMLKit

/// A value a configuration key can hold: what a key of its type expects (for messages) and how it is read from an
/// `FEM_<SECTION>_<KEY>` override.
protocol ConfigValue: Codable, Sendable {
    /// "an integer": what a key of this type expects.
    static var expected: String { get }
    /// Why an override's text is not one: "is not an integer".
    static var notOne: String { get }
    /// The value an override's text gives; nil when the text is not one.
    init?(environmentText: String)
}

extension String: ConfigValue {
    static var expected: String { "a string" }
    static var notOne: String { "is not a string" }
    init?(environmentText text: String) { self = text }
}

extension Int: ConfigValue {
    static var expected: String { "an integer" }
    static var notOne: String { "is not an integer" }
    init?(environmentText text: String) {
        guard let i = Int(text) else { return nil }
        self = i
    }
}

extension Bool: ConfigValue {
    static var expected: String { "true or false" }
    static var notOne: String { "is not true or false" }
    init?(environmentText text: String) {
        switch text.lowercased() {
        case "true", "1", "yes": self = true
        case "false", "0", "no": self = false
        default: return nil
        }
    }
}

/// Lists are comma-separated in overrides (`FEM_LAUNCHERS_ENABLED="process,docker"`).
extension Array: ConfigValue where Element == String {
    static var expected: String { "an array of strings" }
    static var notOne: String { "is not a comma-separated list" }
    init?(environmentText text: String) {
        self = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
}

/// A coding key for tables whose keys are names the administrator chooses (`[credentials."name"]`, `[hooks]`).
struct NameKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { return nil }
}

/// One reading of the configuration: the parsed file, the environment whose `FEM_*` variables override it, the keys
/// the sections asked for, and every problem found (all are reported at once). The section types read their keys
/// through it while `TOMLDecoder` decodes them, so a wrong type becomes "key: expected X, got Y", never a
/// `DecodingError`'s text.
final class ConfigReading {
    let root: TOMLTable
    let environment: [String: String]
    private(set) var problems: [String] = []
    /// Full names (`launchers.docker.socket`) of every key a section read: the file's other keys are unknown.
    private(set) var known: Set<String> = []

    /// The fixed sections, each a table. `[launchers.process]` and its siblings sit inside `[launchers]`.
    static let sections = ["node", "node.capacity", "broker", "launchers", "launchers.process", "launchers.docker", "launchers.flower",
                           "launchers.slurm",
                           "stage_in", "sandboxes", "outputs", "outputs.checks", "journal", "reporter", "metrics", "trust",
                           "console"]
    /// Sections whose keys are names (credentials, hooks, datasets): their readers name unknown keys themselves.
    static let namedSections: Set<String> = ["registries", "credentials", "hooks", "datasets"]

    static let userInfoKey = CodingUserInfoKey(rawValue: "fem.configReading")

    init(root: TOMLTable, environment: [String: String]) {
        self.root = root
        self.environment = environment
    }

    /// The reading a decoder carries; a decoder without one (a section decoded on its own) gets an empty one.
    static func of(_ decoder: any Decoder) -> ConfigReading {
        if let key = userInfoKey, let reading = decoder.userInfo[key] as? ConfigReading { return reading }
        return ConfigReading(root: TOMLTable(), environment: [:])
    }

    func note(_ problem: String) { problems.append(problem) }

    /// A key read as a whole by its section (`node.labels`): nothing in it is unknown.
    func markKnown(_ name: String) { known.insert(name) }

    static func name(_ path: [any CodingKey]) -> String { path.map(\.stringValue).joined(separator: ".") }

    /// `launchers.docker.socket` → `FEM_LAUNCHERS_DOCKER_SOCKET`.
    static func environmentName(_ name: String) -> String {
        "FEM_" + name.replacingOccurrences(of: ".", with: "_").uppercased()
    }

    /// Makes every fixed section a table before decoding, so a missing section decodes to its defaults (with its
    /// overrides applied). A section that is not a table is named.
    func prepareSections() {
        for name in Self.sections {
            let parts = name.split(separator: ".").map(String.init)
            var table = root
            for (i, part) in parts.enumerated() {
                if let value = table[part] {
                    if let sub = value.table {
                        table = sub
                        continue
                    }
                    let full = parts[...i].joined(separator: ".")
                    note("\(full): expected a table ([\(full)]), got \(value.type)")
                    known.insert(full)
                }
                table[part] = TOMLTable()
                guard let made = table[part]?.table else { return }
                table = made
            }
        }
    }

    /// The value of `key`: its `FEM_*` override when set, else the file's, else nil (absent, or a problem noted).
    /// `display` replaces the dotted name in messages (`credentials."git".username`); such keys take no override.
    func value<T: ConfigValue, K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K, display: String? = nil) -> T? {
        let path = c.codingPath + [key]
        let name = display ?? Self.name(path)
        known.insert(Self.name(path))
        if display == nil {
            let variable = Self.environmentName(name)
            if let text = environment[variable] {
                if let v = T(environmentText: text) { return v }
                note("\(name) (from \(variable)): \"\(text)\" \(T.notOne)")
                return nil
            }
        }
        guard c.contains(key) else { return nil }
        do {
            return try c.decode(T.self, forKey: key)
        } catch {
            note(typeProblem(name, path: path, expected: T.self))
            return nil
        }
    }

    /// A key without a default: absent from the file and the environment is a problem.
    func required<T: ConfigValue, K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K) -> T? {
        let name = Self.name(c.codingPath + [key])
        let variable = Self.environmentName(name)
        if !c.contains(key) && environment[variable] == nil {
            known.insert(name)
            note("\(name): is required (or set \(variable))")
            return nil
        }
        return value(c, key)
    }

    /// A fixed section (made a table by `prepareSections`).
    func section<T: Decodable, K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K) -> T? {
        do {
            return try c.decode(T.self, forKey: key)
        } catch {
            note(describe(error, expected: "a table"))
            return nil
        }
    }

    /// "key: expected X, got Y", from the file's own value (for an array, the first element that is not a string).
    func typeProblem<T: ConfigValue>(_ name: String, path: [any CodingKey], expected: T.Type) -> String {
        guard let raw = rawValue(at: path) else { return "\(name): expected \(T.expected)" }
        if T.self == [String].self, let items = raw.array {
            for (i, item) in items.enumerated() where item.string == nil {
                return "\(name)[\(i)]: expected a string, got \(item.type)"
            }
        }
        return "\(name): expected \(T.expected), got \(raw.type)"
    }

    /// What went wrong, from a decoding error: the key it was at and what was expected; never the error's own text.
    func describe(_ error: any Error, expected: String) -> String {
        var path: [any CodingKey] = []
        if let e = error as? DecodingError {
            switch e {
            case .typeMismatch(_, let context), .valueNotFound(_, let context), .keyNotFound(_, let context),
                 .dataCorrupted(let context):
                path = context.codingPath
            @unknown default:
                break
            }
        }
        let name = path.isEmpty ? "(the file)" : Self.name(path)
        if let raw = rawValue(at: path) { return "\(name): expected \(expected), got \(raw.type)" }
        return "\(name): expected \(expected)"
    }

    /// The file's value at `path`, before decoding.
    func rawValue(at path: [any CodingKey]) -> (any TOMLValueConvertible)? {
        var current: any TOMLValueConvertible = root
        for key in path {
            if let table = current.table, let next = table[key.stringValue] {
                current = next
            } else if let index = key.intValue, let array = current.array, index >= 0, index < array.count {
                current = array[index]
            } else {
                return nil
            }
        }
        return current
    }

    /// Every key of the file no section read: a misspelling, or a key this version does not have. Sorted.
    func unknownKeys() -> [String] {
        var names: [String] = []
        func walk(_ table: TOMLTable, _ prefix: String) {
            for key in table.keys {
                let name = prefix.isEmpty ? key : "\(prefix).\(key)"
                if prefix.isEmpty && Self.namedSections.contains(key) { continue }
                if known.contains(name) { continue }
                if let sub = table[key]?.table {
                    walk(sub, name)
                } else {
                    names.append(name)
                }
            }
        }
        walk(root, "")
        return names.sorted()
    }
}
