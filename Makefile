# lhdiscord: PGXS build.
#
#   make && make install           build and install (PostgreSQL 15 when it is
#                                  installed, else the pg_config on PATH; or
#                                  make PG_CONFIG=/usr/lib/postgresql/NN/bin/pg_config)
#   bash test/run                  the whole test suite (see README.md)

PG_CONFIG ?= $(shell test -x /usr/lib/postgresql/15/bin/pg_config && echo /usr/lib/postgresql/15/bin/pg_config || echo pg_config)

EXTENSION  = lhdiscord
MODULE_big = lhdiscord
OBJS       = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
DATA       = $(sort $(wildcard sql/lhdiscord--*.sql))

# pg_regress inputs are sql/<test>.sql (everything but the install scripts).
REGRESS    = $(sort $(patsubst sql/%.sql,%,$(filter-out sql/lhdiscord--%,$(wildcard sql/*.sql))))
ISOLATION  = $(sort $(patsubst test/isolation/specs/%.spec,%,$(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test/isolation

PG_CPPFLAGS = -I$(srcdir)/src
SHLIB_LINK  = -lcurl -ljansson -lcrypto -lwebsockets
PG_CFLAGS   = -Wshadow=compatible-local

EXTRA_CLEAN = test/results test/isolation/output_iso

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS does not track headers: every object depends on the project's own.
$(OBJS): $(wildcard src/*.h)
