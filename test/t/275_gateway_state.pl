# The Gateway's live state as evidence: fresh while the session is healthy
# (longer than snapshot_max_age without an event), fail closed once the
# Gateway is down for longer than that, back when it returns; a 100,000
# member listing with the Gateway worker's memory bounded; in Portal-leading
# mode a managed role removed on Discord by hand is put back.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $ENT = '900000000000000131';     # hauling.member
my $CITIZEN = '900000000000000103';
my $A = '910000000000000001';
my $MAX_AGE = 3;                    # lhdiscord.snapshot_max_age, seconds

start_mock(gateway => 1);
mock_post('/_mock/gateway/config', { heartbeat_interval => 1000 });
setup_guild(members => [ { id => $A, username => 'alice.d', roles => [$ENT] } ]);

my $node = new_node('gwstate', no_extension => 1, conf => {
	'lhdiscord.gateway' => 'on',
	'lhdiscord.snapshot_max_age' => $MAX_AGE,
	'lhdiscord.reconcile_interval' => 0 });
my $q = sub { $node->safe_psql('postgres', $_[0]) };
$q->(qq{
	BEGIN;
	CREATE EXTENSION lhdiscord;
	SELECT lhdiscord.map_role('hauling.member', '$ENT');
	INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES (1, 'alice', 'citizen');
	SELECT lhdiscord.link_account(1, '$A', 'alice.d');
	COMMIT;
});
my $ws = sub { $q->("SELECT $_[0] FROM lhdiscord.worker_status") };
ok(wait_for(sub { $ws->('gateway_seeded') eq 't' }, 45), 'listed');

# Healthy: no event for longer than snapshot_max_age, still fresh.
sleep $MAX_AGE + 2;
is($q->('SELECT snapshot_fresh FROM lhdiscord.access_context()'), 't',
	"no member event for @{[$MAX_AGE + 2]} s, but the session is healthy: the live state is fresh");
cmp_ok($q->('SELECT extract(epoch FROM now() - taken_at) FROM lhdiscord.member_snapshots WHERE id = (SELECT gateway_snapshot_id FROM lhdiscord.worker_status)'),
	'<', 2.5, 'its taken_at follows the heartbeats');
is($q->('SELECT lhdiscord.has_access(1)'), 't', 'alice has access');
is($q->('SELECT drift FROM lhdiscord.status_map WHERE user_id = 1'), 'none', 'status_map reads the live state');

# The Gateway goes down (4004 stops it): after snapshot_max_age nobody is
# entitled.
mock_post('/_mock/gateway/faults', { action => 'close', code => 4004 });
ok(wait_for(sub { $ws->('gateway_state') eq 'stopped' }, 5), 'the Gateway is down');
ok(wait_for(sub { $q->('SELECT snapshot_fresh FROM lhdiscord.access_context()') eq 'f' }, $MAX_AGE + 3),
	'after snapshot_max_age the live state is stale');
is($q->('SELECT entitled FROM lhdiscord.status_map WHERE user_id = 1'), 'f', 'nobody is entitled (fail closed)');
is($q->('SELECT drift FROM lhdiscord.status_map WHERE user_id = 1'), 'stale_snapshot', 'status_map says why');
is($q->('SELECT lhdiscord.has_access(1)'), 'f', 'alice has no access');
$q->('SELECT count(*) FROM lhdiscord.reconcile()');
is($q->('SELECT status FROM lhdiscord.users WHERE user_id = 1'), 'suspended', 'a reconcile suspends her');

# It comes back: a new listing, and the reconcile after it.
$q->('SELECT pg_reload_conf()');
ok(wait_for(sub { $ws->('gateway_seeded') eq 't' && $ws->('gateway_state') eq 'connected' }, 45), 'the Gateway is back and listed');
ok(wait_for(sub { $q->('SELECT status FROM lhdiscord.users WHERE user_id = 1') eq 'active' }, 5),
	'alice is active again');
is($q->('SELECT lhdiscord.has_access(1)'), 't', 'with access');

# 100,000 members: the listing arrives in 100 chunks, stored one by one.
my $gpid = $ws->('gateway_pid');
sub rss_anon_kb
{
	open(my $fh, '<', "/proc/$gpid/status") or return 0;
	my ($kb) = map { /^RssAnon:\s+(\d+)/ ? $1 : () } <$fh>;
	return $kb // 0;
}
my $base = rss_anon_kb();
mock_post('/_mock/guilds', { id => GUILD_ID, auto_roles => JSON::PP::true,
	members => [ { id => $A, username => 'alice.d', roles => [$ENT] } ],
	generate => { count => 99_999, start_id => '920000000000000000', roles => [$ENT] } });
my $old = $ws->('gateway_snapshot_id');
my $t0 = time;
mock_post('/_mock/gateway/faults', { action => 'invalid_session', resumable => JSON::PP::false });
my $peak = $base;
my $deadline = time + 180;
while (time < $deadline)
{
	my $r = rss_anon_kb();
	$peak = $r if $r > $peak;
	last if $ws->('gateway_snapshot_id') ne $old && $ws->('gateway_seeded') eq 't';
	usleep(100_000);
}
my $secs = time - $t0;
my $snap = $ws->('gateway_snapshot_id');
isnt($snap, $old, 'a new listing');
is($q->("SELECT complete || ' ' || trusted || ' ' || member_count FROM lhdiscord.member_snapshots WHERE id = $snap"),
	'true true 100000', '100,000 members, complete and trusted');
is($q->("SELECT count(*) FROM lhdiscord.snapshot_members WHERE snapshot_id = $snap"), '100000', 'all stored');
diag(sprintf('100,000-member listing: %.1f s; Gateway worker RssAnon %d kB before, peak %d kB (+%d kB)',
	$secs, $base, $peak, $peak - $base));
cmp_ok($peak - $base, '<', 64 * 1024, 'the Gateway worker grew by less than 64 MiB while listing');
mock_delete("/_mock/members/@{[GUILD_ID]}/$A/roles/$ENT");
ok(wait_for(sub { $q->('SELECT status FROM lhdiscord.users WHERE user_id = 1') eq 'suspended' }, 1),
	'events still act within 1 s in a guild of 100,000');

# Portal-leading: a managed role removed by hand on Discord is put back.
$node->append_conf('postgresql.conf', "lhdiscord.governance_mode = 'portal_leading'\n");
$q->('SELECT pg_reload_conf()');
$q->(qq{
	SELECT lhdiscord.map_role('citizen', '$CITIZEN');
	UPDATE lhdiscord.users SET status = 'active' WHERE user_id = 1;
	INSERT INTO lhdiscord.user_roles (user_id, role) VALUES (1, 'hauling.member');
});
ok(wait_for(sub { (grep { $_ eq $CITIZEN } @{ mock_get("/_mock/members/@{[GUILD_ID]}/$A")->{roles} }) ? 1 : 0 }, 10),
	'the citizen role reached Discord');
ok(wait_for(sub { $q->(q{SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight')}) eq '0' }, 10),
	'converged');
my $jobs = $q->(q{SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'roles'});
mock_delete("/_mock/members/@{[GUILD_ID]}/$A/roles/$CITIZEN");
ok(wait_for(sub { (grep { $_ eq $CITIZEN } @{ mock_get("/_mock/members/@{[GUILD_ID]}/$A")->{roles} }) ? 1 : 0 }, 3),
	'removed by hand on Discord: put back (drift repaired)');
is($q->(q{SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'roles'}), $jobs + 1, 'by one convergence');
is($q->(q{SELECT lane || ' ' || reason FROM lhdiscord.outbox WHERE kind = 'roles' ORDER BY id DESC LIMIT 1}),
	'interactive Managed roles changed on Discord by hand', 'in the interactive lane, saying why');
sleep 2;
is($q->(q{SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'roles'}), $jobs + 1,
	'its own role changes queue no further convergence');

my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no crash');

# Postmaster death: the Gateway worker leaves within a poll interval.
$gpid = $ws->('gateway_pid');
my $wpid = $ws->('pid');
my $pm = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
kill 'KILL', $pm;
ok(wait_for(sub { !kill(0, $gpid) }, 3), 'postmaster killed: the Gateway worker exits within 3 s');
ok(wait_for(sub { !kill(0, $wpid) }, 3), 'and so does the outbox worker');
# What the postmaster left behind (its other children) goes too.
system("pkill -KILL -f -- '-D @{[$node->data_dir]}' 2>/dev/null");
$node->_update_pid(-1);
done_testing();
