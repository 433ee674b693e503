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
            let type = args.first { $0["id"]?.stringValue == name }?["type"]?.stringValue
            given[name] = typed(text, type: type)
        }
        task["params"] = .object(given)
        return .object(task)
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
