#ifndef FEM_CCRYPTO_SHIM_H
#define FEM_CCRYPTO_SHIM_H
// OpenSSL's libcrypto, for SHA-256 at hardware speed (SHA-NI where the CPU has it): every byte that leaves the
// node, and every task file that arrives, is hashed.
#include <openssl/evp.h>
#endif
