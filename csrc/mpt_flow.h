/* Flow bucket of an inner IP packet: the sender hashes the 5-tuple so the
 * receiver can reorder each flow on its own (mpt_reorder.h).
 *
 * Key: IPv4 or IPv6 source and destination address and protocol, plus the
 * two ports for TCP, UDP, UDP-Lite, SCTP and DCCP.  Never per-packet
 * fields (TTL, id, length, payload), so every packet of a flow agrees.
 *   - IPv4 fragments (MF set or offset != 0) use addresses and protocol
 *     only: the later fragments carry no ports, and all fragments of a
 *     datagram must stay together.
 *   - IPv6: no extension header is followed; the fixed header's next
 *     header is taken as the protocol, so ports count only when it names
 *     a transport directly.  Packets with extension headers (fragments
 *     included) between two addresses share a bucket per header type.
 *   - Anything else (truncated, not IP, bad IPv4 header length) hashes the
 *     bytes there are, up to 64; nothing past len is read.
 * The two directions of a flow need not share a bucket.  Unkeyed: the
 * bucket only steers reordering, it is no security boundary.
 */
#ifndef MPT_FLOW_H
#define MPT_FLOW_H

#include <stdint.h>

/* A bucket in 0..nbuckets-1 (0 when nbuckets is 0). */
uint32_t mpt_flow_bucket(const uint8_t *pkt, uint32_t len, uint32_t nbuckets);

#endif
