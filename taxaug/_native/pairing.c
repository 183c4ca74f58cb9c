/* ingroup_permutation's pairing on CPU. */
#include "kernels.h"

/* ingroup_permutation's pairing, the same perm as its torch code: `shuffled` is the random order the
 * caller drew (torch.randperm); members of a group keep that order (a stable sort by group id, here
 * an LSD radix sort of keys packing the group above the position in `shuffled`), and each member
 * of a group with at least `min_size` members gets the next one round the group as its partner.
 * Negative ids never mix. -1 if the ids are too large to pack beside a position in 64 bits, or
 * memory ran out (the caller then runs the torch code). */
TAXAUG_EXPORT int taxaug_ingroup_perm(int64_t *perm, const int64_t *group_ids, const int64_t *shuffled, int64_t n,
                                      int64_t min_size) {
    if (n <= 0) return 0;
    int position_bits = 1;
    while (position_bits < 62 && ((int64_t)1 << position_bits) < n) position_bits++;
    uint64_t top = 0; /* group keys: 0 for negative ids (never mixed), id + 1 otherwise */
    for (int64_t i = 0; i < n; i++)
        if (group_ids[i] >= 0 && (uint64_t)group_ids[i] + 1 > top) top = (uint64_t)group_ids[i] + 1;
    int group_bits = 0;
    while (group_bits < 64 && (top >> group_bits) != 0) group_bits++;
    if (group_bits + position_bits > 63) return -1;
    const int key_bits = group_bits + position_bits;
    uint64_t *keys = malloc(2 * sizeof(uint64_t) * (size_t)n);
    if (!keys) return -1;
    uint64_t *spare = keys + n;
    for (int64_t k = 0; k < n; k++) {
        const int64_t g = group_ids[shuffled[k]];
        keys[k] = ((g < 0 ? 0 : (uint64_t)g + 1) << position_bits) | (uint64_t)k;
    }
    for (int shift = 0; shift < key_bits; shift += 8) { /* keys are unique, so any order of passes is exact */
        int64_t count[257] = {0};
        for (int64_t k = 0; k < n; k++) count[((keys[k] >> shift) & 255) + 1]++;
        for (int d = 0; d < 256; d++) count[d + 1] += count[d];
        for (int64_t k = 0; k < n; k++) spare[count[(keys[k] >> shift) & 255]++] = keys[k];
        uint64_t *sorted = spare;
        spare = keys;
        keys = sorted;
    }
    const uint64_t position_mask = ((uint64_t)1 << position_bits) - 1;
    for (int64_t start = 0, end; start < n; start = end) {
        const uint64_t group = keys[start] >> position_bits;
        for (end = start + 1; end < n && keys[end] >> position_bits == group; end++) {}
        const int64_t members = end - start;
        const int mixes = group != 0 && members >= min_size;
        for (int64_t j = start; j < end; j++) {
            const int64_t i = shuffled[keys[j] & position_mask];
            perm[i] = mixes ? shuffled[keys[start + (j - start + 1) % members] & position_mask] : i;
        }
    }
    free(keys < spare ? keys : spare); /* the start of the one allocation */
    return 0;
}
