/* A library the unload test maps, probes and dlcloses
 * (test_unload.cpp). */
__attribute__((noinline, visibility("default"))) int unload_target(int x) {
    volatile int y = x;
    return y * 3 + 1;
}
