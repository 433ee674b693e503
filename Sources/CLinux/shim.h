// glibc declares these only under _GNU_SOURCE, which Swift's Glibc module is not built with. Declaring the
// prototypes here (they exist in glibc >= 2.29, Debian 12 has 2.36) is enough to call them.
#ifndef FEM_CLINUX_SHIM_H
#define FEM_CLINUX_SHIM_H
#include <spawn.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/eventfd.h>

extern int posix_spawn_file_actions_addchdir_np(posix_spawn_file_actions_t *actions, const char *path);
extern int pipe2(int pipefd[2], int flags);

static inline int fem_spawn_add_chdir(posix_spawn_file_actions_t *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}
static inline int fem_pipe_cloexec_nonblock(int fds[2]) { return pipe2(fds, O_CLOEXEC | O_NONBLOCK); }
// cgroup v1 OOM notifications arrive on an eventfd (memory.oom_control + cgroup.event_control); Swift's Glibc
// module does not include <sys/eventfd.h>.
static inline int fem_eventfd_nonblock(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
#endif
