/*-------------------------------------------------------------------------
 *
 * jobs_roles.c
 *	  The role convergence job: bring one Discord user to its desired roles.
 *
 * Owns the life of a "roles" outbox job.  Its inputs (account, user, portal
 * roles, last applied state) are loaded for the whole claimed batch in one
 * query, and the desired set is computed from them at that moment, so the
 * job converges to the current state however many changes folded into it.
 *
 * When the roles the member holds are known (lhdiscord.role_state, kept
 * after every successful convergence) the job sends only the PUT and DELETE
 * calls that change something.  When they are unknown (first link, after a
 * failure) it reads the member once (GET member) and diffs.  Only managed
 * roles are ever removed.  Any failed call forgets the state, so the next
 * convergence reads the member again.  A convergence that takes access
 * away (brig, unlink, revoke) always reads the member first, so it removes
 * every managed role the member holds, also those added on Discord by hand.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "lhdiscord.h"
#include "lhd_engine.h"
#include "lhd_json.h"

typedef struct RolesState
{
	bool		applied_known;	/* held came from role_state */
	LhdRoleSet	desired;
	LhdRoleSet	managed;
	LhdRoleSet	held;			/* what the member holds, as far as we know */
	bool		fetched;		/* held came from GET member */
	int			failures;		/* calls that failed */
	LhdRequest *first_failure;	/* the most telling failed response */
	LhdOutcome	worst;			/* outcome the failures lead to */
} RolesState;

/* Load the inputs of every claimed roles job and compute its sets. */
void
lhd_roles_prepare(LhdEngine *e, List *tasks)
{
	int			n = list_length(tasks);
	char	  **ids = palloc(sizeof(char *) * n);
	LhdRoleMap *map;
	LhdRoleInputs *inputs;
	ListCell   *lc;
	int			i = 0;

	foreach(lc, tasks)
		ids[i++] = ((LhdTask *) lfirst(lc))->discord_user_id;
	map = lhd_rolemap_load();
	inputs = lhd_role_inputs_load(ids, n);

	i = 0;
	foreach(lc, tasks)
	{
		LhdTask    *t = lfirst(lc);
		MemoryContext old = MemoryContextSwitchTo(t->cxt);
		RolesState *st = palloc0(sizeof(RolesState));

		/* The sets are copied into the task: the batch's SPI memory goes. */
		lhd_desired_roles(map, &inputs[i], &st->desired, &st->managed);
		/*
		 * A removal that takes access away (the account is brigged or gone)
		 * must be complete whatever the cache says (a moderator added a
		 * managed role by hand, a failover left stale state): read the
		 * member first.
		 */
		st->applied_known = inputs[i].applied_known && inputs[i].account_exists &&
			inputs[i].account_active && !inputs[i].in_brig;
		if (st->applied_known)
			for (int k = 0; k < inputs[i].applied.n; k++)
				lhd_roleset_add(&st->held, inputs[i].applied.ids[k]);
		/* Role ids a role_map change retired: removed where held. */
		{
			char	  **retired;
			int			nretired;

			if (t->payload && lhd_json_id_array(t->payload, "retired_role_ids", &retired, &nretired))
				for (int k = 0; k < nretired; k++)
					if (!lhd_roleset_contains(&st->desired, retired[k]))
						lhd_roleset_add(&st->managed, retired[k]);
		}
		st->worst = LHD_OUT_DONE;
		t->state = st;
		MemoryContextSwitchTo(old);
		i++;
	}
}

/* Queue one role call (PUT adds, DELETE removes) for the task's member. */
static void
send_role_call(LhdEngine *e, LhdTask *t, LhdOp op, const char *role)
{
	LhdRequest *r = lhd_task_request(t, op, "/guilds/%s/members/%s/roles/%s",
									 e->guild_id, t->discord_user_id, role);

	r->role_id = r->path + strlen(r->path) - strlen(role);
	lhd_task_send(e, t, r);
}

/* Send the calls that take the member from held to desired. */
static void
send_diff(LhdEngine *e, LhdTask *t)
{
	RolesState *st = t->state;
	int			sent = 0;

	/* Removals first: only managed roles the member holds and should not. */
	for (int i = 0; i < st->held.n; i++)
	{
		if (lhd_roleset_contains(&st->managed, st->held.ids[i]) &&
			!lhd_roleset_contains(&st->desired, st->held.ids[i]))
		{
			send_role_call(e, t, LHD_OP_ROLE_DELETE, st->held.ids[i]);
			sent++;
		}
	}
	for (int i = 0; i < st->desired.n; i++)
	{
		if (!lhd_roleset_contains(&st->held, st->desired.ids[i]))
		{
			send_role_call(e, t, LHD_OP_ROLE_PUT, st->desired.ids[i]);
			sent++;
		}
	}
	if (sent == 0)
		lhd_task_finish(e, t, LHD_OUT_DONE, 0, NULL);
}

void
lhd_roles_start(LhdEngine *e, LhdTask *t)
{
	RolesState *st = t->state;

	if (st->applied_known)
		send_diff(e, t);
	else if (st->managed.n == 0)
	{
		/* Nothing is managed: nothing to read or change. */
		lhd_task_finish(e, t, LHD_OUT_DONE, 0, NULL);
	}
	else
		lhd_task_send(e, t, lhd_task_request(t, LHD_OP_MEMBER_GET, "/guilds/%s/members/%s",
											 e->guild_id, t->discord_user_id));
}

/* Keep the failure that decides the job's fate: permanent beats transient. */
static void
note_failure(LhdTask *t, LhdRequest *r)
{
	RolesState *st = t->state;
	LhdOutcome	o = lhd_classify(t, r);

	st->failures++;
	if (st->first_failure == NULL || (o == LHD_OUT_FAILED && st->worst != LHD_OUT_FAILED))
	{
		st->first_failure = r;
		st->worst = o;
	}
}

void
lhd_roles_response(LhdEngine *e, LhdTask *t, LhdRequest *r)
{
	RolesState *st = t->state;

	/* An urgent change folded in: end without sending more (it runs again). */
	if (t->superseded)
	{
		if (t->outstanding == 0)
			lhd_task_finish(e, t, LHD_OUT_CONTINUE, 0, "superseded by a change that takes access away");
		return;
	}
	if (r->op == LHD_OP_MEMBER_GET)
	{
		char	  **roles;
		int			n;

		if (!lhd_response_ok(r))
		{
			lhd_task_finish_from(e, t, r);
			return;
		}
		if (!lhd_json_member_roles(r->resp_body, &roles, &n))
		{
			lhd_task_finish(e, t, LHD_OUT_RETRY, r->status, "malformed guild member response");
			return;
		}
		{
			MemoryContext old = MemoryContextSwitchTo(t->cxt);

			for (int i = 0; i < n; i++)
				lhd_roleset_add(&st->held, roles[i]);
			MemoryContextSwitchTo(old);
		}
		st->fetched = true;
		send_diff(e, t);
		return;
	}

	if (lhd_response_ok(r))
	{
		MemoryContext old = MemoryContextSwitchTo(t->cxt);

		if (r->op == LHD_OP_ROLE_PUT)
			lhd_roleset_add(&st->held, r->role_id);
		else
		{
			/* Rebuild without the removed role. */
			LhdRoleSet	kept = {0};

			for (int i = 0; i < st->held.n; i++)
				if (strcmp(st->held.ids[i], r->role_id) != 0)
					lhd_roleset_add(&kept, st->held.ids[i]);
			st->held = kept;
		}
		MemoryContextSwitchTo(old);
	}
	else
		note_failure(t, r);

	if (t->outstanding > 0)
		return;
	if (st->failures == 0)
		lhd_task_finish(e, t, LHD_OUT_DONE, r->status, NULL);
	else
	{
		char	   *summary = lhd_response_summary(st->first_failure);

		if (st->worst == LHD_OUT_FAILED)
			ereport(WARNING,
					(errmsg("lhdiscord: role convergence of Discord user %s failed without retry: %s",
							t->discord_user_id, summary)));
		lhd_task_finish(e, t, st->worst, st->first_failure->status, summary);
	}
}

/*
 * Remember what each successfully converged member holds; forget it for the
 * others so their next convergence reads the member first.
 */
void
lhd_roles_record(LhdEngine *e, List *tasks)
{
	static LhdPlan upsert_plan = {
		.sql = "INSERT INTO lhdiscord.role_state (discord_user_id, role_ids, synced_at) "
		"SELECT r.id, r.roles::text[], now() FROM unnest($1::text[], $2::text[]) AS r(id, roles) "
		"ON CONFLICT (discord_user_id) DO UPDATE SET role_ids = EXCLUDED.role_ids, synced_at = now()",
		.nargs = 2,
		.argtypes = {TEXTARRAYOID, TEXTARRAYOID},
		.options = LHD_PLAN_FRESH
	};
	static LhdPlan forget_plan = {
		.sql = "DELETE FROM lhdiscord.role_state WHERE discord_user_id = ANY ($1::text[])",
		.nargs = 1,
		.argtypes = {TEXTARRAYOID},
		.options = LHD_PLAN_FRESH
	};
	int			n = list_length(tasks);
	Datum	   *known_ids = palloc(sizeof(Datum) * n);
	Datum	   *known_sets = palloc(sizeof(Datum) * n);
	Datum	   *unknown_ids = palloc(sizeof(Datum) * n);
	int			nknown = 0;
	int			nunknown = 0;
	ListCell   *lc;

	foreach(lc, tasks)
	{
		LhdTask    *t = lfirst(lc);
		RolesState *st = t->state;

		if (st == NULL)
			continue;
		if (t->outcome == LHD_OUT_DONE && (st->fetched || st->applied_known))
		{
			known_ids[nknown] = CStringGetTextDatum(t->discord_user_id);
			known_sets[nknown++] = CStringGetTextDatum(lhd_roleset_literal(&st->held));
		}
		else if (t->outcome != LHD_OUT_DONE)
			unknown_ids[nunknown++] = CStringGetTextDatum(t->discord_user_id);
	}
	if (nknown > 0)
	{
		Datum		values[2];

		values[0] = PointerGetDatum(construct_array_builtin(known_ids, nknown, TEXTOID));
		values[1] = PointerGetDatum(construct_array_builtin(known_sets, nknown, TEXTOID));
		lhd_exec(&upsert_plan, values, NULL, false, 0);
	}
	if (nunknown > 0)
	{
		Datum		values[1];

		values[0] = PointerGetDatum(construct_array_builtin(unknown_ids, nunknown, TEXTOID));
		lhd_exec(&forget_plan, values, NULL, false, 0);
	}
}
