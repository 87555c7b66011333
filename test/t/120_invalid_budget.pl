# Staying far from Discord's invalid-request ban: 401/403/429 responses are
# counted over ten minutes; from half of lhdiscord.invalid_request_budget the
# worker slows to one request per second, at the budget it stops sending.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $N = 40;
start_mock();
# Every role is "above the bot": each PUT answers 403 (50013).
mock_post('/_mock/guilds', { id => GUILD_ID, roles => ['900000000000000101'],
	privileged_roles => ['900000000000000101'],
	members => [ map { { id => sprintf('93%016d', $_) } } 1 .. $N ] });
# One request at a time, so the phases are visible (with many in flight, the
# responses to requests already sent can overshoot a small budget).
my $node = new_node('budget', conf => {
	'lhdiscord.invalid_request_budget' => 10, 'lhdiscord.max_concurrency' => 1 });
my $q = sub { $node->safe_psql('postgres', $_[0]) };
$q->(qq{
	SELECT lhdiscord.map_role('traveler', '900000000000000101');
	INSERT INTO lhdiscord.users (user_id, username, membership_level)
	  SELECT g, 'u' || g, 'traveler' FROM generate_series(1, $N) g;
	INSERT INTO lhdiscord.role_state SELECT '93' || lpad(g::text, 16, '0'), '{}' FROM generate_series(1, $N) g;
	SELECT count(lhdiscord.link_account(g, '93' || lpad(g::text, 16, '0'), 'u' || g)) FROM generate_series(1, $N) g;
});

# The first five 403s go out at full speed; then one per second.
ok(wait_for(sub { (mock_stats()->{forbidden_403} // 0) >= 5 }, 20), 'five 403s');
my $t_half = time();
my $at_half = mock_stats()->{bot_requests};
ok(wait_for(sub { $q->('SELECT throttled FROM lhdiscord.worker_status') eq 't' }, 20),
	'worker_status: throttled');
sleep 3;
my $slow = mock_stats()->{bot_requests} - $at_half;
my $secs = time() - $t_half;
cmp_ok($slow, '<=', int($secs) + 2, "slowed to about one request per second ($slow in ${\ sprintf('%.1f', $secs)} s)");

# At the budget (10) sending stops.
ok(wait_for(sub { (mock_stats()->{forbidden_403} // 0) >= 10 }, 30), 'ten 403s');
sleep 1;
my $at_budget = mock_stats()->{bot_requests};
sleep 4;
is(mock_stats()->{bot_requests}, $at_budget, 'no request at all once the budget is spent');
cmp_ok($q->('SELECT invalid_requests_10min FROM lhdiscord.worker_status'), '>=', 10,
	'worker_status counts the invalid requests');
cmp_ok($q->(q{SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight')}), '>', 0,
	'the remaining jobs wait');
is($q->(q{SELECT count(*) FROM lhdiscord.outbox WHERE state = 'failed'}), $at_budget - 1,
	'each answered 403 (50013) failed its job without retry (the other request was the token probe)');

$node->stop;
done_testing();
