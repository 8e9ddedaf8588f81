/*
 * A qemu-user TCG plugin that counts executed guest instructions and prints the total to
 * stderr at exit ("guest_insns N"). With the argument pcs=FILE it also writes, per translated
 * block, "ADDRESS INSNS EXECUTIONS BYTES" lines to FILE (BYTES: the block's instructions in
 * hex, as the guest holds them), which run.py --symbols maps to functions and run.py --cycles
 * hands to llvm-mca. Debian ships qemu-user's plugin loader but not
 * qemu-plugin.h, so the few API v1 entry points used are declared here; the dynamic
 * qemu-aarch64 / qemu-arm of Debian 12 (qemu 7.2) resolve them at load time.
 *
 * Build: gcc -shared -fPIC -O2 -o libinsns.so insns.c
 * Use:   qemu-aarch64 -plugin ./libinsns.so[,pcs=FILE] -cpu cortex-a72 ./binary args
 *
 * The count is of the emulated program only, deterministic for the same binary, input and
 * CPU model (repeat runs agree within 0.1%). With several guest threads the inline counter
 * can lose increments, so count single-threaded runs (--threads 1).
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
extern struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
extern const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
extern size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                                     void *ptr, uint64_t imm);
extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t insns;

/* One per translation (a block translated twice gets two; run.py adds them up). Kept for the
 * whole run: the inline counters point into them. */
struct block {
    uint64_t vaddr;
    uint64_t n_insns;
    uint64_t executions;
    unsigned char *bytes;
    size_t n_bytes;
    struct block *next;
};
static struct block *blocks;
static const char *pcs_path;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, n);
    if (pcs_path) {
        struct block *b = calloc(1, sizeof *b);
        if (!b) {
            return;
        }
        b->vaddr = qemu_plugin_tb_vaddr(tb);
        b->n_insns = n;
        for (size_t i = 0; i < n; i++) {
            b->n_bytes += qemu_plugin_insn_size(qemu_plugin_tb_get_insn(tb, i));
        }
        b->bytes = malloc(b->n_bytes ? b->n_bytes : 1);
        if (b->bytes) {
            size_t at = 0;
            for (size_t i = 0; i < n; i++) {
                struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
                size_t size = qemu_plugin_insn_size(insn);
                memcpy(b->bytes + at, qemu_plugin_insn_data(insn), size);
                at += size;
            }
        }
        b->next = blocks;
        blocks = b;
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->executions, 1);
    }
}

static void at_exit(qemu_plugin_id_t id, void *userdata) {
    (void)id;
    (void)userdata;
    fprintf(stderr, "guest_insns %" PRIu64 "\n", insns);
    if (pcs_path) {
        FILE *f = fopen(pcs_path, "w");
        if (!f) {
            fprintf(stderr, "insns plugin: cannot write %s\n", pcs_path);
            return;
        }
        for (struct block *b = blocks; b; b = b->next) {
            if (b->executions) {
                fprintf(f, "%" PRIx64 " %" PRIu64 " %" PRIu64 " ", b->vaddr, b->n_insns, b->executions);
                for (size_t i = 0; b->bytes && i < b->n_bytes; i++) {
                    fprintf(f, "%02x", b->bytes[i]);
                }
                fputc('\n', f);
            }
        }
        fclose(f);
    }
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                              int argc, char **argv) {
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "pcs=", 4) == 0) {
            pcs_path = argv[i] + 4;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
