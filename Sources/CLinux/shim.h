// glibc declares these only under _GNU_SOURCE, which Swift's Glibc module is not built with. Declaring the
// prototypes here (they exist in glibc >= 2.29, Debian 12 has 2.36) is enough to call them.
#ifndef FEM_CLINUX_SHIM_H
#define FEM_CLINUX_SHIM_H
#include <spawn.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <net/if.h>
#include <sys/epoll.h>
#include <sys/mman.h>

extern int posix_spawn_file_actions_addchdir_np(posix_spawn_file_actions_t *actions, const char *path);
extern int pipe2(int pipefd[2], int flags);
extern int unshare(int flags);
extern int clone(int (*fn)(void *), void *stack, int flags, void *arg, ...);

static inline int fem_spawn_add_chdir(posix_spawn_file_actions_t *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}
static inline int fem_pipe_cloexec_nonblock(int fds[2]) { return pipe2(fds, O_CLOEXEC | O_NONBLOCK); }
// cgroup v1 OOM notifications arrive on an eventfd (memory.oom_control + cgroup.event_control); Swift's Glibc
// module does not include <sys/eventfd.h>.
static inline int fem_eventfd_nonblock(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

// One epoll reactor (FEMSystem's EventReactor) watches child exits (pidfds) and cgroup v1 OOM eventfds.
// struct epoll_event is packed on x86_64, which Swift imports poorly: these take and give only the 64-bit token.
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
/// A pidfd (Linux >= 5.3): readable once the process exits. glibc < 2.36 has no wrapper.
static inline int fem_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }
/// Names the calling thread (15 bytes at most), for `top -H` and /proc/PID/task/TID/comm. A new thread inherits its
/// creator's name otherwise (a dispatch worker's), and Foundation's Thread.name does not reach the kernel on Linux.
static inline void fem_name_thread(const char *name) { (void)prctl(PR_SET_NAME, name, 0, 0, 0); }
static inline int fem_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
static inline int fem_epoll_add(int epfd, int fd, unsigned long long token) {
    struct epoll_event e;
    memset(&e, 0, sizeof e);
    e.events = EPOLLIN;
    e.data.u64 = token;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e);
}
static inline int fem_epoll_del(int epfd, int fd) { return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, (void *)0); }
/// Waits for up to 64 ready descriptors; their tokens go into `tokens`. Returns the count, or -1 with errno.
static inline int fem_epoll_wait(int epfd, unsigned long long *tokens, int max, int timeout_ms) {
    struct epoll_event events[64];
    if (max > 64) max = 64;
    int n = epoll_wait(epfd, events, max, timeout_ms);
    for (int i = 0; i < n; i++) tokens[i] = events[i].data.u64;
    return n;
}

// ---------------------------------------------------------------------------------------------------------------
// Confined spawn (host processes of the `process` and `flower` launchers).
//
// Why this exists: posix_spawn cannot change the uid, set PR_SET_NO_NEW_PRIVS, unshare a namespace or join a
// cgroup, and Swift cannot safely run code between fork and exec (the runtime may allocate or take locks). So the
// clone and everything up to execve happens here, in C, using only system calls on memory the parent prepared
// before the clone. A failing step is reported to the parent through a close-on-exec pipe
// (which step, errno); the parent reads it until EOF, which means execve succeeded.
// ---------------------------------------------------------------------------------------------------------------

#define FEM_CLONE_NEWNET 0x40000000
#define FEM_PR_SET_NO_NEW_PRIVS 38

/// Steps of the child's setup, reported with errno when one fails.
enum {
    FEM_STEP_SETPGID = 1,
    FEM_STEP_CGROUP = 2,
    FEM_STEP_UNSHARE_NET = 3,
    FEM_STEP_LOOPBACK = 4,
    FEM_STEP_STDIN = 5,
    FEM_STEP_STDOUT = 6,
    FEM_STEP_STDERR = 7,
    FEM_STEP_CHDIR = 8,
    FEM_STEP_RLIMIT = 9,
    FEM_STEP_SETGROUPS = 10,
    FEM_STEP_SETGID = 11,
    FEM_STEP_SETUID = 12,
    FEM_STEP_NO_NEW_PRIVS = 13,
    FEM_STEP_SIGNALS = 14,
    FEM_STEP_EXEC = 15,
    FEM_STEP_FORK = 16,
    FEM_STEP_PIPE = 17,
};

/// Everything the child needs, prepared by the parent. A negative uid/gid keeps the parent's.
struct fem_confinement {
    const char *const *cgroup_procs;  // NULL-terminated list of cgroup.procs paths to join ("0" is written)
    int new_network;                   // unshare(CLONE_NEWNET) and bring `lo` up
    long long uid;
    long long gid;
    int set_rlimits;
    unsigned long long nofile;
    unsigned long long nproc;
    unsigned long long fsize;          // 0: unlimited
    int set_umask;                     // umask 077
};

static inline void fem_child_fail(int fd, int step) {
    int report[2] = {step, errno};
    ssize_t r;
    do { r = write(fd, report, sizeof report); } while (r < 0 && errno == EINTR);
    _exit(127);
}

static inline int fem_child_write_all(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static inline int fem_child_open_onto(const char *path, int flags, int target) {
    int fd = open(path, flags | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    if (fd != target) {
        if (dup2(fd, target) < 0) return -1;  // dup2 clears FD_CLOEXEC on the target
        close(fd);
    } else {
        int fl = fcntl(fd, F_GETFD);
        if (fl < 0 || fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC) < 0) return -1;
    }
    return 0;
}

/// What the child of `fem_spawn_confined` works from: all prepared by the parent, on the parent's memory.
struct fem_spawn_args {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    const char *stdout_path;
    const char *stderr_path;
    const struct fem_confinement *c;
    int report;      // write end of the report pipe
    int report_read; // its read end (the parent's; closed in the child)
};

/// The child, from clone to execve. It shares the parent's memory (CLONE_VM) while the parent's calling thread is
/// suspended (CLONE_VFORK), as glibc's posix_spawn does: only system calls, on its own stack and the arguments.
static int fem_spawn_child(void *p) {
    const struct fem_spawn_args *a = (const struct fem_spawn_args *)p;
    const struct fem_confinement *c = a->c;
    int report = a->report;
    close(a->report_read);  // the child's own descriptor table (no CLONE_FILES): the parent keeps its copy
    // Keep the report pipe clear of 0-2, which are replaced below (a daemon started with one of them closed).
    if (report < 3) {
        report = fcntl(report, F_DUPFD_CLOEXEC, 3);
        if (report < 0) _exit(127);
    }
    if (setpgid(0, 0) != 0) fem_child_fail(report, FEM_STEP_SETPGID);
    if (c) {
        for (const char *const *p = c->cgroup_procs; p && *p; p++) {
            int fd = open(*p, O_WRONLY | O_CLOEXEC);
            if (fd < 0) fem_child_fail(report, FEM_STEP_CGROUP);
            if (fem_child_write_all(fd, "0", 1) != 0) fem_child_fail(report, FEM_STEP_CGROUP);
            close(fd);
        }
        if (c->new_network) {
            if (unshare(FEM_CLONE_NEWNET) != 0) fem_child_fail(report, FEM_STEP_UNSHARE_NET);
            int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            if (s < 0) fem_child_fail(report, FEM_STEP_LOOPBACK);
            struct ifreq ifr;
            memset(&ifr, 0, sizeof ifr);
            memcpy(ifr.ifr_name, "lo", 3);
            if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) fem_child_fail(report, FEM_STEP_LOOPBACK);
            ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
            if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) fem_child_fail(report, FEM_STEP_LOOPBACK);
            close(s);
        }
    }
    if (fem_child_open_onto("/dev/null", O_RDONLY, 0) != 0) fem_child_fail(report, FEM_STEP_STDIN);
    if (fem_child_open_onto(a->stdout_path, O_WRONLY | O_CREAT | O_APPEND, 1) != 0)
        fem_child_fail(report, FEM_STEP_STDOUT);
    if (fem_child_open_onto(a->stderr_path, O_WRONLY | O_CREAT | O_APPEND, 2) != 0)
        fem_child_fail(report, FEM_STEP_STDERR);
    if (chdir(a->cwd) != 0) fem_child_fail(report, FEM_STEP_CHDIR);
    if (c) {
        if (c->set_rlimits) {
            struct rlimit r;
            r.rlim_cur = r.rlim_max = (rlim_t)c->nofile;
            if (setrlimit(RLIMIT_NOFILE, &r) != 0) fem_child_fail(report, FEM_STEP_RLIMIT);
            r.rlim_cur = r.rlim_max = (rlim_t)c->nproc;
            if (setrlimit(RLIMIT_NPROC, &r) != 0) fem_child_fail(report, FEM_STEP_RLIMIT);
            r.rlim_cur = r.rlim_max = 0;
            if (setrlimit(RLIMIT_CORE, &r) != 0) fem_child_fail(report, FEM_STEP_RLIMIT);
            if (c->fsize > 0) {
                r.rlim_cur = r.rlim_max = (rlim_t)c->fsize;
                if (setrlimit(RLIMIT_FSIZE, &r) != 0) fem_child_fail(report, FEM_STEP_RLIMIT);
            }
        }
        if (c->set_umask) umask(077);
        // Raw system calls: glibc's wrappers would try to change every thread of the daemon, whose memory this
        // child shares; the raw calls change this task's credentials alone.
        if (c->gid >= 0) {
            if (syscall(SYS_setgroups, 0, (void *)0) != 0) fem_child_fail(report, FEM_STEP_SETGROUPS);
            if (syscall(SYS_setresgid, (gid_t)c->gid, (gid_t)c->gid, (gid_t)c->gid) != 0)
                fem_child_fail(report, FEM_STEP_SETGID);
        }
        if (c->uid >= 0) {
            if (syscall(SYS_setresuid, (uid_t)c->uid, (uid_t)c->uid, (uid_t)c->uid) != 0)
                fem_child_fail(report, FEM_STEP_SETUID);
        }
        if (prctl(FEM_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fem_child_fail(report, FEM_STEP_NO_NEW_PRIVS);
    }
    // Default dispositions (the daemon ignores SIGPIPE, and ignored signals survive exec), then an empty mask.
    // The child has its own copy of the handlers (no CLONE_SIGHAND); every signal stays blocked until here.
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < 65; s++) {
        if (s == SIGKILL || s == SIGSTOP) continue;
        (void)sigaction(s, &dfl, (void *)0);  // EINVAL for the few the C library reserves; harmless
    }
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, (void *)0) != 0) fem_child_fail(report, FEM_STEP_SIGNALS);
    // Nothing of the daemon's (journal, broker socket, cgroup eventfds) may reach the task: every descriptor
    // above stderr is closed at exec (close_range with CLOSE_RANGE_CLOEXEC, Linux >= 5.11; else one by one).
    if (c && syscall(SYS_close_range, 3u, ~0u, 4u /* CLOSE_RANGE_CLOEXEC */) != 0) {
        for (int fd = 3; fd < 65536; fd++) {
            int fl = fcntl(fd, F_GETFD);
            if (fl >= 0) (void)fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
        }
    }
    execve(a->path, a->argv, a->envp);
    fem_child_fail(report, FEM_STEP_EXEC);
    return 127;
}

#define FEM_CLONE_VM 0x00000100
#define FEM_CLONE_VFORK 0x00004000
#define FEM_SPAWN_STACK (256 * 1024)

/// Starts `path` confined as `c` describes (NULL: only a process group, default signals, log files), without
/// fork(): a fork of the daemon copies its page tables only for execve to throw them away (a fifth of the daemon's
/// CPU per task in the dispatch profile, bench/PROFILE.md). clone(CLONE_VM | CLONE_VFORK) on a stack of its own is
/// what glibc's posix_spawn does; posix_spawn itself cannot change the uid, set PR_SET_NO_NEW_PRIVS, unshare a
/// namespace or join a cgroup.
/// Returns the child's pid (> 0) once execve succeeded; on failure returns -1 with *step_out and *errno_out set
/// (the child, if there was one, is reaped).
static inline pid_t fem_spawn_confined(const char *path, char *const argv[], char *const envp[],
                                       const char *cwd, const char *stdout_path, const char *stderr_path,
                                       const struct fem_confinement *c, int *step_out, int *errno_out) {
    int fds[2];
    *step_out = 0;
    *errno_out = 0;
    if (pipe2(fds, O_CLOEXEC) != 0) {
        *step_out = FEM_STEP_PIPE;
        *errno_out = errno;
        return -1;
    }
    void *stack = mmap((void *)0, FEM_SPAWN_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                       -1, 0);
    if (stack == MAP_FAILED) {
        *step_out = FEM_STEP_FORK;
        *errno_out = errno;
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    struct fem_spawn_args args = {path, argv, envp, cwd, stdout_path, stderr_path, c, fds[1], fds[0]};
    // Block every signal across the clone so no handler of the parent runs in the child before it resets them.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    // The stack grows down: the child starts at its top. The caller's thread waits here until the child has
    // exec'd or exited (CLONE_VFORK).
    pid_t pid = clone(fem_spawn_child, (char *)stack + FEM_SPAWN_STACK, FEM_CLONE_VM | FEM_CLONE_VFORK | SIGCHLD,
                      &args);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, (void *)0);
    munmap(stack, FEM_SPAWN_STACK);
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        *step_out = FEM_STEP_FORK;
        *errno_out = clone_errno;
        return -1;
    }
    int report[2] = {0, 0};
    size_t got = 0;
    while (got < sizeof report) {
        ssize_t r = read(fds[0], (char *)report + got, sizeof report - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fds[0]);
    if (got == sizeof report) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        *step_out = report[0];
        *errno_out = report[1];
        return -1;
    }
    return pid;
}
#endif
