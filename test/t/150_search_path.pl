# A planted operator is never executed with a superuser's rights (issue 11).
#
# An application role owns the database the worker serves, so it owns schema
# public and may set the database's search_path.  It plants public.= and
# public.<> for lhdiscord's enums (outbox_state, outbox_kind, identity_status,
# account_status) and for text, and public.< / public.<= for timestamptz,
# each backed by a SECURITY INVOKER function that logs, writes a marker row
# and runs ALTER ROLE app SUPERUSER before returning the real comparison; and
# it sets ALTER DATABASE ... SET search_path = public, pg_catalog.  Then the
# worker claims, records, reclaims, prunes and reconciles, and a superuser
# calls drain_outbox() and prune_outbox() with public first in search_path.
# The trap must never fire: app stays a plain role, the marker table stays
# empty, the log has no trace, and the work is done all the same.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use constant ROLE_TRAVELER => '900000000000000101';

my $N = 4;
sub did { return sprintf('8%017d', $_[0]); }

start_mock();
setup_guild(members => [ map { { id => did($_) } } 1 .. $N + 4 ]);

my $node = new_node('search_path', no_start => 1, conf => {
	'lhdiscord.database' => "'appdb'",
	'lhdiscord.reconcile_interval' => 1 });
$node->start;

# Every query of the test itself runs with a pinned search_path: the traps
# are for lhdiscord's code, and the test must not spring them itself.
my $PIN = 'SET search_path = pg_catalog, pg_temp;';

sub sql
{
	my ($query, %opt) = @_;
	my ($out, $err, $timed_out);
	# psql may die writing to a server that is gone (IPC::Run: broken pipe).
	my $rc = eval {
		$node->psql($opt{db} // 'appdb', ($opt{raw} ? '' : $PIN) . $query,
			stdout => \$out, stderr => \$err, timeout => 60, timed_out => \$timed_out);
	} // -1;
	$err = $@ if $rc == -1;
	if ($rc != 0 || $timed_out)
	{
		diag("query failed (rc $rc" . ($timed_out ? ', timed out' : '') . "): $query\n" . ($err // ''));
		return undef;
	}
	return $out;
}

sub wait_sql
{
	my ($query, $expect, $secs, $what) = @_;
	return wait_for(sub { my $v = sql($query); defined $v && $v eq $expect }, $secs, $what);
}

sub delivered
{
	my ($tag) = @_;
	return scalar(grep { ($_->{content} // '') =~ /^\Q$tag\E / } @{ mock_get('/_mock/messages') });
}

# ---------- the application role and its database ----------

ok(defined sql(q{
	CREATE ROLE app LOGIN;
	CREATE DATABASE appdb OWNER app;
}, db => 'postgres'), 'an application role that owns the database appdb');
ok(defined sql(q{
	CREATE EXTENSION lhdiscord;
	GRANT USAGE ON SCHEMA lhdiscord TO app;
	DO $$
	BEGIN
		IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'lhdiscord_app') THEN
			EXECUTE 'GRANT lhdiscord_app TO app';
		ELSE
			EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON lhdiscord.users, lhdiscord.user_roles TO app';
		END IF;
	END $$;
}), 'the extension, created by a superuser in the worker\'s database; the application\'s grants');
is(sql(q{SELECT pg_catalog.pg_get_userbyid(nspowner) FROM pg_catalog.pg_namespace WHERE nspname = 'public'}),
	'pg_database_owner', 'schema public belongs to the database owner (app)');

# ---------- the traps, planted by app ----------

# [operator, left type, right type, name of the function]
my @traps = (
	map({ my $t = $_; ([ '=', "lhdiscord.$t", "lhdiscord.$t", "eq_$t" ], [ '<>', "lhdiscord.$t", "lhdiscord.$t", "ne_$t" ]) }
		qw(outbox_state outbox_kind identity_status account_status)),
	[ '=', 'text', 'text', 'eq_text' ],
	[ '<>', 'text', 'text', 'ne_text' ],
	[ '<', 'timestamptz', 'timestamptz', 'lt_timestamptz' ],
	[ '<=', 'timestamptz', 'timestamptz', 'le_timestamptz' ],
);
my $plant = q{
	SET ROLE app;
	CREATE TABLE public.lhd_marker (
	  at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	  caller  text,
	  backend text,
	  op      text);
	GRANT INSERT ON public.lhd_marker TO PUBLIC;
	-- What a planted operator does once it runs with a superuser's rights.
	CREATE FUNCTION public.lhd_trap(op text) RETURNS void
	  LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog AS $$
	BEGIN
		RAISE LOG 'lhd-trap: planted operator % executed by %', op, current_user;
		BEGIN
			INSERT INTO public.lhd_marker (caller, backend, op)
			  SELECT current_user, a.backend_type, op
			    FROM pg_catalog.pg_stat_activity a WHERE a.pid = pg_catalog.pg_backend_pid();
		EXCEPTION WHEN others THEN NULL;
		END;
		BEGIN
			EXECUTE 'ALTER ROLE app SUPERUSER';
		EXCEPTION WHEN others THEN NULL;
		END;
	END $$;
};
for my $t (@traps)
{
	my ($op, $l, $r, $fn) = @$t;
	$plant .= qq{
	CREATE FUNCTION public.lhd_$fn(a $l, b $r) RETURNS boolean
	  LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog AS \$\$
	BEGIN
		PERFORM public.lhd_trap('$op($l, $r)');
		RETURN a OPERATOR(pg_catalog.$op) b;
	END \$\$;
	CREATE OPERATOR public.$op (LEFTARG = $l, RIGHTARG = $r, FUNCTION = public.lhd_$fn);
	};
}
$plant .= q{
	ALTER DATABASE appdb SET search_path = public, pg_catalog;
	RESET ROLE;
};
ok(defined sql($plant), 'app plants ' . scalar(@traps) . ' operators in public and puts public first in the database\'s search_path');
is(sql(q{SELECT count(*) FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
	WHERE n.nspname = 'public' AND pg_catalog.pg_get_userbyid(o.oprowner) = 'app'}),
	scalar(@traps), 'the operators are in place, owned by app');

# The trap works: a superuser query that resolves the planted operator
# springs it (then the evidence is cleaned up and app demoted again).
is(sql(q{SET search_path = public, pg_catalog;
	SELECT count(*) FROM (VALUES ('pending'::lhdiscord.outbox_state)) v(s) WHERE s = 'pending'}, raw => 1),
	'1', 'self-check: an unqualified comparison by a superuser resolves to the planted operator ...');
is(sql(q{SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'app'}), 't',
	'... and the trap makes app a superuser');
ok(defined sql(q{ALTER ROLE app NOSUPERUSER; TRUNCATE public.lhd_marker;}), 'self-check evidence removed');
my $off = -s $node->logfile;

# A fresh worker: nothing it plans was planned before the traps.
$node->restart;
my $pid = sql(q{SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'lhdiscord worker'});
ok(wait_for(sub {
	$pid = sql(q{SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'lhdiscord worker'}) // '';
	$pid =~ /^\d+$/ }, 30, 'the worker'), "the worker runs in appdb (pid $pid)");

# ---------- work for the worker: claims, records, reconcile, housekeeping ----------

ok(defined sql(qq{
	SELECT lhdiscord.map_role('traveler', '@{[ROLE_TRAVELER]}');
	INSERT INTO lhdiscord.users (user_id, username, membership_level)
	  SELECT g, 'u' || g, 'traveler' FROM generate_series(1, $N) g;
	SELECT count(lhdiscord.link_account(g, '8' || lpad(g::text, 17, '0'), 'u' || g)) FROM generate_series(1, $N) g;
	INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload)
	  SELECT 'dm', '8' || lpad(g::text, 17, '0'), jsonb_build_object('content', 'sp-worker to ' || g)
	    FROM generate_series(1, $N) g;
	-- A DM claimed by a process that is gone: only housekeeping gives it back.
	INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload, state, attempts, claimed_by, claimed_at)
	  VALUES ('dm', '@{[did(1)]}', '{"content": "sp-reclaimed to 1"}', 'in_flight', 1, 2147483000, now());
}), 'users linked, DMs queued, a stale claim left behind');
my $t0 = time();
ok(wait_sql(q{SELECT count(*) FROM lhdiscord.outbox WHERE state::text <> 'done'}, '0', 40, 'the worker\'s work'),
	'the worker finished every job');
is(delivered('sp-worker'), $N, 'the worker delivered the DMs');
is(delivered('sp-reclaimed'), 1, 'housekeeping gave the stale claim back and it was delivered');
like(slurp_file($node->logfile, $off), qr/outbox job\(s\) claimed by an ended process were queued again/,
	'housekeeping ran its reclaim');
is(join(',', map { join('+', @{ mock_get('/_mock/members/' . GUILD_ID . '/' . did($_))->{roles} // [] }) } 1 .. $N),
	join(',', (ROLE_TRAVELER) x $N), 'the worker converged the roles');
# No snapshot in Discord-leading mode: nobody is entitled, the scheduled
# reconcile suspends everyone (4 users: below the guard).
ok(wait_sql(q{SELECT string_agg(DISTINCT status::text, ',') FROM lhdiscord.users}, 'suspended', 20, 'reconcile'),
	'the scheduled reconcile ran and suspended the unentitled users');
# Let another housekeeping pass (every 10 s) and more reconciles run over
# the finished jobs with the traps in place.
my $left = 12 - (time() - $t0);
sleep($left) if $left > 0;

# ---------- drain_outbox and prune_outbox, called with public first ----------

my $drained = sql(qq{
	BEGIN;
	INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload)
	  SELECT 'dm', '8' || lpad(g::text, 17, '0'), jsonb_build_object('content', 'sp-drain to ' || g)
	    FROM generate_series(1, 2) g;
	SET LOCAL search_path = public, pg_catalog;
	SELECT lhdiscord.drain_outbox();
	COMMIT;
});
ok(defined $drained && $drained =~ /^\d+$/ && $drained >= 2, 'drain_outbox() with public first in search_path finished the DMs (' . ($drained // 'error') . ')');
is(delivered('sp-drain'), 2, 'drain_outbox() delivered them');
is(sql(q{SHOW search_path}, raw => 1), 'public, pg_catalog', 'the caller\'s search_path is unchanged (database setting)');
is(sql(q{SET search_path = public, pg_catalog; SELECT lhdiscord.drain_outbox(); SHOW search_path;}, raw => 1),
	"0\npublic, pg_catalog", 'drain_outbox() restores the caller\'s search_path');
sleep 2;
my $pruned = sql(q{SET search_path = public, pg_catalog; SELECT lhdiscord.prune_outbox('1 second');}, raw => 1);
ok(defined $pruned && $pruned =~ /^\d+$/ && $pruned >= $N + 3,
	'prune_outbox() with public first in search_path pruned the finished jobs (' . ($pruned // 'error') . ')');
is(sql(q{SELECT count(*) FROM lhdiscord.outbox}), '0', 'the outbox is empty after pruning');

# ---------- the verdict ----------

is(sql(q{SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'app'}), 'f', 'app never became a superuser');
is(sql(q{SELECT count(*) FROM public.lhd_marker}), '0', 'the marker table is empty');
my $seen = sql(q{SELECT string_agg(DISTINCT op || ' by ' || caller || ' (' || coalesce(backend, '?') || ')', '; ') FROM public.lhd_marker});
diag("planted operators executed: $seen") if defined $seen && $seen ne '';
my @sprung = grep { /lhd-trap: planted operator/ } split /\n/, slurp_file($node->logfile, $off);
is(scalar(@sprung), 0, 'no planted operator ran (server log)');
diag("first: $sprung[0]") if @sprung;
is(sql(q{SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'lhdiscord worker'}), $pid,
	'the same worker ran throughout');

$node->stop('fast', fail_ok => 1);
done_testing();
