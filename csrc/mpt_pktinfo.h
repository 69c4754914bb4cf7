/* The server's own address per path.  Its listen socket is usually bound
 * to the wildcard address; a reply must leave from the address the client
 * sent to, not from whatever the route picks, or the client (and any NAT
 * on the way) would not recognise it.  IP_PKTINFO / IPV6_PKTINFO tell us
 * that address on receive and set it on send. */
#ifndef MPT_PKTINFO_H
#define MPT_PKTINFO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define MPT_PKTINFO_SPACE 64   /* >= CMSG_SPACE(sizeof(struct in6_pktinfo)) */

struct mpt_local {
    uint32_t family;           /* 0: unknown, 4 or 6 */
    uint8_t addr[16];
};

/* The destination address of a received datagram, from its control messages. */
void mpt_pktinfo_parse(struct msghdr *m, struct mpt_local *out);
/* Control message making a datagram leave from `l`; returns its length
 * (0 when `l` is unknown). */
size_t mpt_pktinfo_build(const struct mpt_local *l, uint8_t *buf, size_t cap);

#endif
