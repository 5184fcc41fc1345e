/* A uprobe target: main calls bpfmount_probe_target (testenv's
 * ProbeTargetSymbol) as many times as its first argument says. */
#include <stdlib.h>
__attribute__((noinline)) int bpfmount_probe_target(int i) { asm volatile("" ::: "memory"); return i + 1; }
int main(int argc, char **argv) {
	int n = argc > 1 ? atoi(argv[1]) : 1, s = 0;
	for (int i = 0; i < n; i++) s += bpfmount_probe_target(i);
	return s == -1;
}
