import CCurl
import CGit2
import CRabbitMQ

/// Versions of the C libraries this build links, for `fem-client check` and the heartbeat.
public enum LibraryVersions {
    public static var rabbitmq: String { String(cString: amqp_version()) }
    public static var curl: String { String(cString: curl_version()) }
    public static var libgit2: String {
        var major: Int32 = 0, minor: Int32 = 0, rev: Int32 = 0
        _ = git_libgit2_version(&major, &minor, &rev)
        return "\(major).\(minor).\(rev)"
    }
}
