# The worker: wake on commit (not on a poll tick), nothing on rollback, the
# Discord request it sends, its presence in pg_stat_activity, the status
# views, and what a role convergence costs against a real HTTP server.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

start_mock();
setup_guild(members => [ { id => '200000000000000001', roles => ['555555555555555555'] } ]);

# A long poll interval: only a commit can wake the worker quickly.
my $node = new_node('worker', conf => { 'lhdiscord.poll_interval' => 3600 });
$node->safe_psql('postgres', q{
	SELECT lhdiscord.map_role('traveler', '900000000000000101');
	SELECT lhdiscord.map_role('resident', '900000000000000102');
	SELECT lhdiscord.map_role('verified', '900000000000000104');
	INSERT INTO lhdiscord.users (user_id, username, membership_level)
	  VALUES (1, 'alice', 'traveler');
});

ok(wait_for(sub {
	$node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lhdiscord worker'") eq '1' }, 30,
	'worker in pg_stat_activity'), 'worker shows in pg_stat_activity with its backend_type');
is($node->safe_psql('postgres', 'SELECT running, preloaded FROM lhdiscord.worker_status'),
	't|t', 'worker_status: running, preloaded');

# Let the worker finish its start-up and go to sleep: idle on its latch.
ok(wait_for(sub {
	$node->safe_psql('postgres',
		"SELECT state, wait_event_type, wait_event FROM pg_stat_activity WHERE backend_type = 'lhdiscord worker'")
	  eq 'idle|Extension|Extension' }, 10), 'idle worker waits on its latch (wait event Extension)');
my $seq = mock_get('/_mock/requests?since=0')->{last_seq};

# Commit: the request reaches the mock without waiting for a poll tick.
my $t0 = time();
$node->safe_psql('postgres',
	q{SELECT lhdiscord.link_account(1, '200000000000000001', 'alice_d')});
ok(wait_for(sub { scalar(@{ mock_requests($seq) }) >= 4 }, 10, 'convergence'),
	'link converged on the mock');
my $elapsed = time() - $t0;
cmp_ok($elapsed, '<', 5, "commit reached Discord in ${elapsed}s (poll interval is 1 h)");

my @all = @{ mock_requests($seq) };
is("$all[0]{method} $all[0]{path}", 'GET /api/v10/users/@me',
	'the first request after start is the token probe');
my @reqs = @all[ 1 .. $#all ];
is_deeply([ map { "$_->{method} $_->{path}" } @reqs ],
	[
		'GET /api/v10/guilds/100000000000000001/members/200000000000000001',
		'PUT /api/v10/guilds/100000000000000001/members/200000000000000001/roles/900000000000000101',
		'PUT /api/v10/guilds/100000000000000001/members/200000000000000001/roles/900000000000000104'
	],
	'one GET member, then only the missing roles');
my $put = $reqs[1];
like($put->{headers}{'user-agent'}, qr/^DiscordBot \(https?:\/\/\S+, \d+\.\d+\.\d+\)$/,
	'User-Agent: DiscordBot (url, version)');
is($put->{headers}{authorization}, 'Bot <redacted:ok>', 'Authorization: Bot <token> accepted');
is($put->{headers}{'x-audit-log-reason'}, 'Discord%20account%20linked',
	'X-Audit-Log-Reason carries the audit reason, URL-encoded');
is($put->{headers}{'content-length'}, '0', 'body-less PUT sends Content-Length: 0');
ok($put->{ua_ok} && $put->{auth_ok}, 'mock accepted UA and auth');
is_deeply(mock_get('/_mock/members/' . GUILD_ID . '/200000000000000001')->{roles},
	[ '555555555555555555', '900000000000000101', '900000000000000104' ],
	'member holds the managed roles and keeps its unmanaged one');

ok(wait_for(sub {
	$node->safe_psql('postgres', "SELECT state FROM lhdiscord.outbox") eq 'done' }, 10),
	'job recorded as done');

# Rollback: nothing is sent.
$seq = mock_get('/_mock/requests?since=0')->{last_seq};
$node->safe_psql('postgres', q{
	BEGIN;
	UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 1;
	ROLLBACK;
});
usleep(1_500_000);
is(scalar(@{ mock_requests($seq) }), 0, 'rolled-back change sends nothing');
is($node->safe_psql('postgres', "SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'"),
	'0', 'rolled-back change queued nothing');

# A promotion: exactly two calls, and the wake is immediate.
$t0 = time();
$node->safe_psql('postgres',
	q{UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 1});
ok(wait_for(sub { scalar(@{ mock_requests($seq) }) >= 2 }, 10), 'promotion converged');
usleep(300_000);
is_deeply([ map { "$_->{method} " . ($_->{path} =~ s{.*/}{}r) } @{ mock_requests($seq) } ],
	[ 'DELETE 900000000000000101', 'PUT 900000000000000102' ],
	'promotion: DELETE old level, PUT new level, nothing else');

# Status views.
my $stats = $node->safe_psql('postgres',
	"SELECT kind, state, jobs FROM lhdiscord.outbox_stats ORDER BY 1, 2");
is($stats, "roles|done|2", 'outbox_stats: queue depth by kind and state');
my ($calls, $ok2xx, $r429, $paused) = split /\|/, $node->safe_psql('postgres',
	'SELECT calls, responses_2xx, rate_limited, paused FROM lhdiscord.worker_status');
is($calls, 6, 'worker_status counts calls (the probe, 3 to link, 2 to promote)');
is($ok2xx, 6, 'worker_status counts 2xx responses');
is($r429, 0, 'no 429s');
is($paused, 'f', 'not paused');

# Direct outbox insert by a DBA (DM): also wakes the worker; exactly one
# message, split at 2000 characters on a line boundary.
mock_post('/_mock/users', { id => '200000000000000001', username => 'alice_d' });
$seq = mock_get('/_mock/requests?since=0')->{last_seq};
$node->safe_psql('postgres', q{
	INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload)
	VALUES ('dm', '200000000000000001',
	        jsonb_build_object('content', repeat('a', 1500) || E'\n' || repeat('b', 1500)));
});
ok(wait_for(sub { scalar(@{ mock_get('/_mock/messages') }) == 2 }, 10), 'DM delivered in two parts');
my $msgs = mock_get('/_mock/messages');
is(length($msgs->[0]{content}), 1500, 'first part breaks at the newline');
is(length($msgs->[1]{content}), 1500, 'second part is the rest');
my $jobnonce = $node->safe_psql('postgres', "SELECT nonce FROM lhdiscord.outbox WHERE kind = 'dm'");
like($jobnonce, qr/^[0-9a-f]{20}$/, 'the DM job has a random 20-hex nonce');
is($msgs->[0]{nonce}, "$jobnonce-0", 'part 0 is posted with the job nonce and part number');
is($msgs->[1]{nonce}, "$jobnonce-1", 'part 1 likewise');
cmp_ok(length($msgs->[1]{nonce}), '<=', 25, 'within the 25 characters Discord takes');
my @dm = grep { $_->{path} =~ m{/messages$} } @{ mock_requests($seq) };
is($dm[0]{body}{enforce_nonce}, JSON::PP::true, 'enforce_nonce: true');
is($node->safe_psql('postgres', 'SELECT count(*) FROM lhdiscord.dm_channels'), '1', 'DM channel cached');

# Pruning keeps recent finished jobs and removes old ones.
$node->safe_psql('postgres',
	"UPDATE lhdiscord.outbox SET finished_at = now() - interval '30 days' WHERE kind = 'roles'");
is($node->safe_psql('postgres', 'SELECT lhdiscord.prune_outbox()'), '2', 'prune_outbox removes old finished jobs');

$node->stop;
done_testing();
