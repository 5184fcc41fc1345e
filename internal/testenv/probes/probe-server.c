/* A container's long-lived main process: calls bpfmount_probe_target
 * (testenv's ProbeTargetSymbol) N times for each number N read on stdin,
 * answering "ok" after each. For -N, a forked child makes the N calls (a
 * container's worker). */
#include <stdio.h>
#include <unistd.h>
#include <sys/wait.h>
__attribute__((noinline)) int bpfmount_probe_target(int i) { asm volatile("" ::: "memory"); return i + 1; }
static int calls(int n) { int s = 0; for (int i = 0; i < n; i++) s += bpfmount_probe_target(i); return s; }
int main(void) {
	int n, s = 0;
	setvbuf(stdout, NULL, _IONBF, 0);
	while (scanf("%d", &n) == 1) {
		if (n < 0) {
			pid_t p = fork();
			if (p == 0) _exit(calls(-n) == -1);
			if (p < 0 || waitpid(p, NULL, 0) != p) return 2;
		} else {
			s += calls(n);
		}
		printf("ok\n");
	}
	return s == -1;
}
