/*
 * The ARM peer: onnxruntime's own linux-arm64 library (libonnxruntime.so.1 from the npm package
 * onnxruntime-node) running one model N times on one thread, so that run.py --peer counts its
 * guest instructions and estimated cycles under the same qemu CPU and plugin as ours.
 *
 *   ort_peer MODEL INPUT_NAME OUTPUT_NAME SIZE N
 *
 * The input is [1, 3, SIZE, SIZE] f32 of a fixed pattern. Exit status 0 after N runs, else the
 * library's error message on stderr and status 1.
 *
 * The library ships without headers. Its C API is a table of function pointers reached through
 * OrtGetApiBase()->GetApi(version); onnxruntime only ever appends to that table, so the few
 * entries used here keep their positions in every release since API version 1. The positions
 * and signatures are those documented in onnxruntime_c_api.h.
 *
 * Build: aarch64-linux-gnu-gcc -O2 -o ort_peer ort_peer.c -L DIR -l:libonnxruntime.so.1 -Wl,-rpath,DIR
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef void Status; /* NULL: success */
typedef Status *(*Fn)();

struct ApiBase {
    void **(*get_api)(uint32_t version);
    const char *(*version_string)(void);
};
extern const struct ApiBase *OrtGetApiBase(void);

/* Positions in the OrtApi table. */
enum {
    GET_ERROR_MESSAGE = 2,
    CREATE_ENV = 3,
    CREATE_SESSION = 7,
    RUN = 9,
    CREATE_SESSION_OPTIONS = 10,
    SET_SESSION_EXECUTION_MODE = 13,
    SET_INTRA_OP_NUM_THREADS = 24,
    SET_INTER_OP_NUM_THREADS = 25,
    CREATE_TENSOR_WITH_DATA_AS_ORT_VALUE = 49,
    CREATE_CPU_MEMORY_INFO = 69,
    RELEASE_VALUE = 96,
};

/* Enum values of the C API. */
enum { LOGGING_WARNING = 2, SEQUENTIAL = 0, ARENA_ALLOCATOR = 1, MEM_TYPE_DEFAULT = 0, FLOAT = 1 };

static void **api;

static void check(Status *s, const char *what) {
    if (s) {
        const char *(*message)(Status *) = (const char *(*)(Status *))api[GET_ERROR_MESSAGE];
        fprintf(stderr, "%s: %s\n", what, message(s));
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL INPUT_NAME OUTPUT_NAME SIZE N\n", argv[0]);
        return 2;
    }
    const char *input_name = argv[2], *output_name = argv[3];
    int64_t size = atoll(argv[4]);
    long runs = atol(argv[5]);
    /* Version 16 (onnxruntime 1.16): old enough for any library from the npm package. */
    api = OrtGetApiBase()->get_api(16);
    if (!api) {
        fprintf(stderr, "onnxruntime does not offer C API version 16\n");
        return 1;
    }
    void *env, *options, *session, *memory, *x;
    check(((Status * (*)(int, const char *, void **)) api[CREATE_ENV])(LOGGING_WARNING, "peer", &env),
          "CreateEnv");
    check(((Status * (*)(void **)) api[CREATE_SESSION_OPTIONS])(&options), "CreateSessionOptions");
    check(((Status * (*)(void *, int)) api[SET_INTRA_OP_NUM_THREADS])(options, 1), "SetIntraOpNumThreads");
    check(((Status * (*)(void *, int)) api[SET_INTER_OP_NUM_THREADS])(options, 1), "SetInterOpNumThreads");
    check(((Status * (*)(void *, int)) api[SET_SESSION_EXECUTION_MODE])(options, SEQUENTIAL),
          "SetSessionExecutionMode");
    check(((Status * (*)(void *, const char *, void *, void **)) api[CREATE_SESSION])(env, argv[1], options,
                                                                                      &session),
          "CreateSession");
    check(((Status * (*)(int, int, void **)) api[CREATE_CPU_MEMORY_INFO])(ARENA_ALLOCATOR, MEM_TYPE_DEFAULT,
                                                                          &memory),
          "CreateCpuMemoryInfo");
    int64_t shape[4] = {1, 3, size, size};
    size_t n = (size_t)(3 * size * size);
    float *data = malloc(n * sizeof *data);
    if (!data) {
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        data[i] = (float)((int)(i * 7919 % 2001) - 1000) / 500.0f;
    }
    check(((Status * (*)(void *, void *, size_t, const int64_t *, size_t, int, void **))
               api[CREATE_TENSOR_WITH_DATA_AS_ORT_VALUE])(memory, data, n * sizeof *data, shape, 4, FLOAT, &x),
          "CreateTensorWithDataAsOrtValue");
    for (long i = 0; i < runs; i++) {
        void *y = NULL;
        check(((Status * (*)(void *, void *, const char *const *, void *const *, size_t, const char *const *,
                             size_t, void **)) api[RUN])(session, NULL, &input_name, &x, 1, &output_name, 1, &y),
              "Run");
        ((void (*)(void *))api[RELEASE_VALUE])(y);
    }
    return 0;
}
