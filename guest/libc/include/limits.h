/* Our own <limits.h>: gcc's freestanding one chains to a libc header we lack. */
#pragma once
#define CHAR_BIT 8
#define INT_MAX  __INT_MAX__
#define INT_MIN  (-INT_MAX - 1)
#define UINT_MAX (INT_MAX * 2u + 1u)
#define LONG_MAX __LONG_MAX__
#define LONG_MIN (-LONG_MAX - 1L)
#define ULONG_MAX (LONG_MAX * 2ul + 1ul)

