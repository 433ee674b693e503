/// The version both executables print and the node's heartbeats carry.
public enum FEMVersion {
    public static let string = "0.1.0"
}
