/*
 * Threads created and joined one by one, without holmes: run bare and under
 * LD_PRELOAD of libholmes.so by bench/birth.sh. Usage: plain_thread_create N
 */
#include "thread_create.h"

int main(int argc, char **argv)
{
    thread_create_loop(argc > 1 ? atol(argv[1]) : 1000);
    return 0;
}
