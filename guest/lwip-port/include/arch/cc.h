/* lwIP architecture glue for a freestanding x86-64 build. */
#pragma once
#include <stdint.h>
#include <stddef.h>

/* No <inttypes.h>, <ctype.h>, <errno.h> here: lwIP supplies its own. */
#define LWIP_NO_INTTYPES_H 1
#define LWIP_NO_CTYPE_H    1
#define LWIP_PROVIDE_ERRNO 1
#define X8_F  "02x"
#define U16_F "u"
#define S16_F "d"
#define X16_F "x"
#define U32_F "u"
#define S32_F "d"
#define X32_F "x"
#define SZT_F "lu"

#define BYTE_ORDER LITTLE_ENDIAN
#define LWIP_CHKSUM_ALGORITHM 3

void lwip_port_diag(const char *fmt, ...);
void lwip_port_assert(const char *msg, const char *file, int line) __attribute__((noreturn));
#define LWIP_PLATFORM_DIAG(x) do { lwip_port_diag x; } while (0)
#define LWIP_PLATFORM_ASSERT(x) lwip_port_assert((x), __FILE__, __LINE__)

/* A cheap PRNG for TCP initial sequence numbers and ports (port.c). */
uint32_t lwip_port_rand(void);
#define LWIP_RAND() lwip_port_rand()
