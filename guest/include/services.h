/* The network services (ports in README.md). */
#pragma once
#include <stdint.h>
#define PORT_ECHO    7      /* TCP and UDP echo */
#define PORT_HTTP    80
#define PORT_CONTROL 7000   /* UDP: "dirty N", "status", "poweroff" */
void echo_init(void);
void http_init(void);
void control_init(void);
extern uint64_t http_requests_served;
/* Set by the control service; the main loop powers off once replies are out. */
extern volatile int poweroff_requested;
