/* The job runner: a kernel's items are shared out over torch's OpenMP pool or threads of its own. */
#include "kernels.h"

#ifndef _WIN32
#include <dlfcn.h>
#include <pthread.h>
#endif

#ifdef TAXAUG_X86
int cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
int cpu_has_avx2(void) { return 0; }
#endif

static void run_job(job_t *job) {
    for (;;) {
        const int64_t first = __atomic_fetch_add(job->next, job->chunk, __ATOMIC_RELAXED);
        if (first >= job->batch) return;
        const int64_t last = first + job->chunk < job->batch ? first + job->chunk : job->batch;
        if (job->kind == 0)
            run_mix(job, first, last);
        else if (job->kind == 1)
            run_paste(job, first, last);
        else if (job->kind == 2)
            run_pointwise(job, first, last);
        else if (job->kind == 3)
            run_warp(job, first, last);
        else
            run_topk(job, first, last);
    }
}

#ifndef _WIN32
static void *thread_main(void *arg) {
    run_job((job_t *)arg);
    return NULL;
}

static void openmp_main(void *arg) { run_job((job_t *)arg); }

/* The OpenMP runtime that torch already runs, when one is loaded (libgomp, or a runtime with its
 * GOMP entry points): its worker threads are the ones torch's last op left spinning, so a kernel
 * run on them starts at once, where a thread of our own waits for a core behind them. Looked up at
 * run time, so the library links no OpenMP. Not after a fork: an OpenMP pool does not survive one,
 * and a forked child (a DataLoader worker) starts threads of its own instead. */
typedef void (*gomp_parallel_t)(void (*)(void *), void *, unsigned, unsigned);
static gomp_parallel_t gomp_parallel;
static pthread_once_t openmp_lookup = PTHREAD_ONCE_INIT;
static volatile int forked_child;

static void on_fork_child(void) { forked_child = 1; }

__attribute__((constructor)) static void watch_forks(void) { pthread_atfork(NULL, NULL, on_fork_child); }

static void find_openmp(void) { gomp_parallel = (gomp_parallel_t)dlsym(RTLD_DEFAULT, "GOMP_parallel"); }

/* 0 = as found, 1 = never use the OpenMP pool (for tests and benchmarks). */
static int openmp_disabled;
#endif

int run_parallel(job_t job, int64_t batch, int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > batch) threads = (int)(batch > 0 ? batch : 1);
#ifdef _WIN32
    threads = 1;
#endif
    int64_t next = 0;
    job.batch = batch;
    job.next = &next;
    job.chunk = batch / (4 * threads) > 1 ? batch / (4 * threads) : 1; /* about four chunks a thread */
#ifndef _WIN32
    if (threads > 1) {
        pthread_once(&openmp_lookup, find_openmp);
        if (gomp_parallel && !forked_child && !openmp_disabled) {
            gomp_parallel(openmp_main, &job, (unsigned)threads, 0);
            return job.failed ? -1 : 0;
        }
    }
    pthread_t handles[MAX_THREADS];
    int started = 0;
    for (int t = 0; t < threads - 1; t++) {
        if (pthread_create(&handles[t], NULL, thread_main, &job) != 0) break; /* the rest runs here */
        started++;
    }
    run_job(&job);
    for (int t = 0; t < started; t++) pthread_join(handles[t], NULL);
#else
    run_job(&job);
#endif
    return job.failed ? -1 : 0;
}

/* Which threads run a kernel: 1 = the OpenMP pool torch runs on (when loaded, not in a forked
 * child), 0 = threads of our own. `use_openmp` < 0 only asks. */
TAXAUG_EXPORT int taxaug_thread_pool(int use_openmp) {
#ifndef _WIN32
    pthread_once(&openmp_lookup, find_openmp);
    if (use_openmp >= 0) openmp_disabled = !use_openmp;
    return gomp_parallel && !forked_child && !openmp_disabled;
#else
    (void)use_openmp;
    return 0;
#endif
}

/* Reports which row kernel this CPU gets, for benchmarks and bug reports. */
TAXAUG_EXPORT const char *taxaug_kernel_isa(void) {
#ifdef TAXAUG_X86
    if (cpu_has_avx2()) return "avx2";
#endif
    return "scalar";
}
