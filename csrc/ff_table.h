/* ff_table: the instance state table. Per function version (a "slot"), two
 * LIFO stacks of idle instances: warm ones (they served before) and spares
 * (forked ahead, never used). Acquire and release are O(1) and allocate
 * nothing; arrays grow only when instances or slots are added.
 *
 * Instance lifecycle, the one transition table (see ff_table.c):
 *   SPAWNING -> IDLE | BUSY | DEAD   (BUSY: forked on the request path)
 *   IDLE     -> BUSY | DRAINING | DEAD
 *   BUSY     -> IDLE | DRAINING | DEAD
 *   DRAINING -> DEAD
 */
#ifndef FF_TABLE_H
#define FF_TABLE_H

#include <stdint.h>

enum ff_state { FF_FREE = 0, FF_SPAWNING, FF_IDLE, FF_BUSY, FF_DRAINING, FF_DEAD, FF_NSTATES };
enum ff_kind { FF_WARM = 0, FF_SPARE = 1 };

struct ff_node {
    int32_t prev, next;     /* in its slot's stack while IDLE; in the free list while FREE */
    int32_t slot;
    uint8_t state;
    uint8_t kind;           /* FF_WARM or FF_SPARE while IDLE */
    double last_used;       /* when it last became IDLE */
};

struct ff_slot {
    int32_t head[2], tail[2];   /* per kind: head = most recently idle */
    int32_t count[FF_NSTATES];
    int32_t n_idle[2];
    int used;
};

struct ff_table {
    struct ff_node *nodes;
    int32_t n_nodes, free_head;
    struct ff_slot *slots;
    int32_t n_slots;
};

int ff_table_init(struct ff_table *t);
void ff_table_free(struct ff_table *t);

int32_t ff_table_slot_new(struct ff_table *t);           /* slot id or -errno */
int ff_table_slot_release(struct ff_table *t, int32_t slot); /* -EBUSY while it has live instances */

int32_t ff_table_add(struct ff_table *t, int32_t slot);  /* a new SPAWNING instance: id or -errno */
int ff_table_set_state(struct ff_table *t, int32_t id, int state, int kind, double now);
int32_t ff_table_acquire(struct ff_table *t, int32_t slot, int *kind); /* IDLE -> BUSY; -1 if none */
int32_t ff_table_pop_expired(struct ff_table *t, int32_t slot, int kind, double cutoff); /* IDLE -> DRAINING */
int ff_table_state(const struct ff_table *t, int32_t id);
int ff_table_count(const struct ff_table *t, int32_t slot, int state);
int ff_table_idle(const struct ff_table *t, int32_t slot, int kind);
int ff_table_transition_ok(int from, int to);

#endif
