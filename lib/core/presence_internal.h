/* Shared between presence.c (state, commands, codecs) and presence_job.c
 * (multi-step reads). Internal to the presence module. */
#ifndef KR_CORE_PRESENCE_INTERNAL_H
#define KR_CORE_PRESENCE_INTERNAL_H

#include "presence.h"

/* A held agent. Lives in the id table and in at most one queue. */
typedef struct kr__prec {
  int64_t id;
  struct kr__prec *prev, *next;
  int where;    /* Q_NONE, Q_DUE, Q_DIRTY */
  int gone;     /* disconnected removal: HDEL on the next connect */
  int announce; /* PUBLISH a wake-up with the next write */
  uint64_t t;   /* Q_DUE: refresh due; Q_DIRTY: writable from */
  uint32_t conns;
  uint64_t since_ms;
  size_t nrep;
  kr__presence_replica *reps;
} kr__prec;

typedef struct kr__pqueue {
  kr__prec *head, *tail;
  size_t n;
} kr__pqueue;

struct kr__presence {
  kr_mem mem;
  kr__presence_config cfg; /* strings point at the copies below */
  char prefix[KR__PRESENCE_PREFIX_MAX + 1];
  size_t prefix_len;
  char instance[KR__PRESENCE_INSTANCE_MAX + 1];
  size_t instance_len;
  char url[KR__PRESENCE_URL_MAX + 1];
  size_t url_len;
  char boot_hex[17];
  /* Held agents: open addressing on id (power-of-two capacity). */
  kr__prec **slots;
  size_t cap, count, held;
  kr__pqueue due, dirty;
  int connected;
  int closed;
  int hb_seen; /* a heartbeat reply arrived since the connection came up */
  char hb_json[KR__PRESENCE_HEARTBEAT_MAX];
  size_t hb_json_len;
  uint64_t hb_next, sweep_next;
};

/* Builder: a command is begun, arguments appended, then ended. Errors are
 * sticky in c->err; kr__pc_done() rolls the list back to the mark taken
 * by kr__pc_mark() when one happened and returns it. */
typedef struct kr__pc_mark {
  size_t n, nargs, arena_len;
} kr__pc_mark;

kr__pc_mark kr__pc_mark_get(const kr__presence_cmds *c);
int kr__pc_done(kr__presence_cmds *c, kr__pc_mark m);
void kr__pc_begin(kr__presence_cmds *c, kr__presence_op op, uint32_t tag);
void kr__pc_arg(kr__presence_cmds *c, const void *p, size_t len);
void kr__pc_arg_str(kr__presence_cmds *c, const char *s);
void kr__pc_arg_u64(kr__presence_cmds *c, uint64_t v);
/* One argument made of the prefix, a middle ("agent:", ...) and a tail. */
void kr__pc_arg_key(kr__presence_cmds *c, const kr__presence *p,
                    const char *mid, const char *tail, size_t tail_len);
void kr__pc_arg_agent_key(kr__presence_cmds *c, const kr__presence *p,
                          int64_t id);
void kr__pc_end(kr__presence_cmds *c);

/* 1 when s[0..len) is 1..max bytes of 0x21..0x7e. */
int kr__presence_name_ok(const char *s, size_t len, size_t max);
/* Looks up a held agent record (gone ones included). */
kr__prec *kr__presence_find(const kr__presence *p, int64_t id);
/* Visits the held (not gone) records; stops at a non-zero return. */
int kr__presence_each(const kr__presence *p,
                      int (*fn)(const kr__prec *r, void *ud), void *ud);

#endif
