// rabbitmq-c 0.11 (Debian 12 ships flat headers; 0.12+ moved them to <rabbitmq-c/...>).
#ifndef FEM_CRABBITMQ_SHIM_H
#define FEM_CRABBITMQ_SHIM_H
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

// amqp_login is variadic (the SASL method decides the trailing arguments), and Swift cannot call
// variadic C functions. These two wrappers fix the argument list for the methods we use.
static inline amqp_rpc_reply_t fem_amqp_login_plain(amqp_connection_state_t state, const char *vhost,
                                                    int channel_max, int frame_max, int heartbeat,
                                                    const char *user, const char *password) {
    return amqp_login(state, vhost, channel_max, frame_max, heartbeat, AMQP_SASL_METHOD_PLAIN, user, password);
}

// EXTERNAL: the broker takes the identity from the client certificate (rabbitmq_auth_mechanism_ssl).
static inline amqp_rpc_reply_t fem_amqp_login_external(amqp_connection_state_t state, const char *vhost,
                                                       int channel_max, int frame_max, int heartbeat,
                                                       const char *identity) {
    return amqp_login(state, vhost, channel_max, frame_max, heartbeat, AMQP_SASL_METHOD_EXTERNAL, identity);
}

// queue.declare with the argument x-queue-type = "quorum" (work pools). A C helper: building an amqp_table_t (an
// array of entries holding a union) from Swift is clumsy and easy to get wrong.
static inline amqp_queue_declare_ok_t *fem_amqp_queue_declare_quorum(amqp_connection_state_t state,
                                                                     amqp_channel_t channel, amqp_bytes_t queue) {
    amqp_table_entry_t entry;
    entry.key = amqp_cstring_bytes("x-queue-type");
    entry.value.kind = AMQP_FIELD_KIND_UTF8;
    entry.value.value.bytes = amqp_cstring_bytes("quorum");
    amqp_table_t args;
    args.num_entries = 1;
    args.entries = &entry;
    return amqp_queue_declare(state, channel, queue, 0, 1, 0, 0, args);
}
#endif
