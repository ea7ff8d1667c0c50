/* virtio-net driver and its lwIP netif. */
#pragma once
#include <stdint.h>
struct netif;
/* Finds and starts the first virtio-net (1af4:1000); 0 if there is none. */
int vnet_init(void);
/* lwIP netif_add() init callback. */
signed char vnet_netif_init(struct netif *n);
/* Feeds received frames to lwIP and recycles sent buffers. Main loop only. */
void vnet_poll(struct netif *n);
/* True when the device interrupted since the last vnet_poll. */
int vnet_pending(void);
