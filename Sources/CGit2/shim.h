#ifndef FEM_CGIT2_SHIM_H
#define FEM_CGIT2_SHIM_H
#include <git2.h>

// git_libgit2_opts is variadic. libgit2 1.5 uses mbedTLS, so a private CA must be given through
// GIT_OPT_SET_SSL_CERT_LOCATIONS (file, path).
static inline int fem_git_set_ssl_cert_locations(const char *file, const char *path) {
    return git_libgit2_opts(GIT_OPT_SET_SSL_CERT_LOCATIONS, file, path);
}
#endif
