/* The names of taxaug_pointwise's op ids, so Python reads the ids from the library instead of keeping
 * its own table: entry i names the op that pointwise.c's OP_* enum numbers i (keep them in the same
 * order; tests/test_native.py runs every id against the torch kernel of the op named here). */
#include "kernels.h"

static const char *const POINTWISE_NAMES[] = {"brightness", "posterize", "solarize", "invert", "color",
                                              "contrast", "hue", "autocontrast", "equalize", "sharpness"};

/* How many pointwise op ids there are (ids are 0 .. count - 1). */
TAXAUG_EXPORT int taxaug_pointwise_op_count(void) {
    return (int)(sizeof(POINTWISE_NAMES) / sizeof(POINTWISE_NAMES[0]));
}

/* The name of pointwise op `id`, or NULL outside 0 .. count - 1. */
TAXAUG_EXPORT const char *taxaug_pointwise_op_name(int id) {
    return id >= 0 && id < taxaug_pointwise_op_count() ? POINTWISE_NAMES[id] : NULL;
}
