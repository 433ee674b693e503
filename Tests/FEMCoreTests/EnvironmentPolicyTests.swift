import FEMCore
import Testing

/// The built-in deny list for plan environments, and the node's optional allowlist on top.
@Suite
struct EnvironmentPolicyTests {
    @Test func loaderShellAndInterpreterVariablesAreDenied() {
        for name in ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "ld_preload", "JEMALLOC_PRELOAD", "DYLD_INSERT_LIBRARIES",
                     "GCONV_PATH", "GLIBC_TUNABLES", "MALLOC_CHECK_", "LOCPATH", "NLSPATH", "TMPDIR", "HOSTALIASES",
                     "PATH", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS", "BASH_FUNC_x", "CDPATH",
                     "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONBREAKPOINT", "PERL5LIB", "PERL5OPT", "PERLLIB",
                     "RUBYOPT", "RUBYLIB", "GEM_PATH", "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
                     "JDK_JAVA_OPTIONS", "CLASSPATH", "R_PROFILE_USER", "R_LIBS", "LUA_INIT", "PIP_INDEX_URL",
                     "GIT_SSH_COMMAND", "GIT_CONFIG_GLOBAL", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE",
                     "HTTPS_PROXY", "http_proxy", "OPENSSL_CONF", "HOME", "XDG_CONFIG_HOME", "PAGER", "TERMINFO"] {
            #expect(EnvironmentPolicy.problem(name: name) != nil, "\(name) is denied")
        }
        #expect(EnvironmentPolicy.problem(name: "LD_PRELOAD") == "env.LD_PRELOAD: this node never passes LD_* to a task "
                + "(it is read by the dynamic linker or libc and can load code into any program)")
        #expect(EnvironmentPolicy.problem(name: "BASH_ENV") == "env.BASH_ENV: this node never passes BASH_ENV to a task "
                + "(it is read by shells and can run commands or change which program runs)")
        #expect(EnvironmentPolicy.problem(name: "PYTHONPATH") == "env.PYTHONPATH: this node never passes PYTHON* to a "
                + "task (it is read by an interpreter and can load or run code before the tool's own)")
    }

    @Test func ordinaryAndHarmlessNamesPass() {
        for name in ["GREETING", "OMP_NUM_THREADS", "LANG", "LC_ALL", "TZ", "NODE_ENV", "PYTHONUNBUFFERED",
                     "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "MYTOOL_MODE", "FAIL_AT_ROUND"] {
            #expect(EnvironmentPolicy.problem(name: name) == nil, "\(name) passes")
        }
    }

    @Test func theNodeAllowlistNarrowsButNeverWidens() {
        let allowed = ["OMP_NUM_THREADS", "MYTOOL_*", "LD_PRELOAD"]
        #expect(EnvironmentPolicy.problem(name: "OMP_NUM_THREADS", allowed: allowed) == nil)
        #expect(EnvironmentPolicy.problem(name: "MYTOOL_MODE", allowed: allowed) == nil)
        #expect(EnvironmentPolicy.problem(name: "GREETING", allowed: allowed)
                == "env.GREETING: is not in this node's launchers.env_allowed (OMP_NUM_THREADS, MYTOOL_*, LD_PRELOAD)")
        #expect(EnvironmentPolicy.problem(name: "LD_PRELOAD", allowed: allowed)?.contains("never passes LD_*") == true,
                "no setting lifts the deny list")
        #expect(EnvironmentPolicy.problem(in: ["B": "1", "PATH": "/x", "A": "2"])?.hasPrefix("env.PATH:") == true)
        #expect(EnvironmentPolicy.problem(in: ["B": "1", "A": "2"]) == nil)
    }
}
