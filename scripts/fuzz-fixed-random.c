/*
 * Preloaded into phase 70's fuzz targets (scripts/phases/70-fuzz.sh): getrandom(2) returns a
 * fixed byte pattern, so that std's HashMap keys, and with them the hash tables' probing and
 * the coverage libFuzzer sees, are the same in every run. With libFuzzer's fixed -seed, a
 * commit then always fuzzes the same inputs. Nothing in a fuzz target needs real randomness.
 */
#include <stddef.h>
#include <sys/types.h>

ssize_t getrandom(void *buf, size_t len, unsigned int flags)
{
	unsigned char *p = buf;

	(void)flags;
	for (size_t i = 0; i < len; i++)
		p[i] = (unsigned char)(i * 131 + 7);
	return (ssize_t)len;
}
