#ifndef FEM_CGIT2_SHIM_H
#define FEM_CGIT2_SHIM_H
#include <git2.h>

// git_libgit2_opts is variadic. libgit2 1.5 uses mbedTLS, so a private CA must be given through
// GIT_OPT_SET_SSL_CERT_LOCATIONS (file, path).
static inline int fem_git_set_ssl_cert_locations(const char *file, const char *path) {
    return git_libgit2_opts(GIT_OPT_SET_SSL_CERT_LOCATIONS, file, path);
}

// Objects are hashed when they arrive (the indexer computes every id from the content it stores); by default libgit2
// hashes each object again on every read from the cache, which git itself does not do. Process-wide.
static inline int fem_git_disable_read_hash_verification(void) {
    return git_libgit2_opts(GIT_OPT_ENABLE_STRICT_HASH_VERIFICATION, 0);
}
#endif
