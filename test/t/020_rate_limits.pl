# Rate limits: with the mock enforcing Discord-like limits (50 requests/s
# globally, a 50/s bucket on role changes) and odd-cased headers, 1,000 role
# changes converge with no more than a handful of 429s and never more than
# 50 requests in any one-second window.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 1000;
start_mock();
setup_guild(members => [ map { { id => sprintf('3%017d', $_) } } 1 .. $N ]);
my $node = new_node('limits');

# Accounts whose roles are known (nothing to read first), and one role to add.
$node->safe_psql('postgres', qq{
	INSERT INTO lhdiscord.users (user_id, username, membership_level)
	  SELECT g, 'u' || g, 'traveler' FROM generate_series(1, $N) g;
	SELECT count(lhdiscord.link_account(g, '3' || lpad(g::text, 17, '0'), 'u' || g))
	  FROM generate_series(1, $N) g;
});
ok(wait_for(sub {
	$node->safe_psql('postgres', "SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'") eq '0' }, 60),
	'links settled (nothing managed yet: no calls)');
$node->safe_psql('postgres', q{
	INSERT INTO lhdiscord.role_state (discord_user_id, role_ids)
	  SELECT discord_user_id, '{}' FROM lhdiscord.discord_accounts;
	SELECT lhdiscord.map_role('rank_jr_crew', '900000000000000121');
});
ok(wait_for(sub {
	$node->safe_psql('postgres', "SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'") eq '0' }, 60),
	'mapping change converged without calls');
is(mock_stats()->{bot_requests}, 0, 'no request so far');

mock_post('/_mock/config', {
	global_limit => 50,
	buckets => { 'PUT /guilds/{guild_id}/members/{user_id}/roles/{role_id}' => { limit => 50, window => 1.0 } },
	header_case => 'odd' });

$node->safe_psql('postgres', q{UPDATE lhdiscord.users SET staff_rank = 'jr_crew'});
ok(wait_for(sub {
	$node->safe_psql('postgres', "SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'") eq '0' }, 120,
	'1000 convergences'), "$N role changes converged");

my $st = mock_stats();
is($st->{bot_requests}, $N + 1, "exactly $N requests (one PUT per change) after the token probe");
cmp_ok($st->{max_per_second}, '<=', 50, "never more than 50 requests in a second (max $st->{max_per_second})");
my $r429 = $st->{rate_limited_global} + $st->{rate_limited_bucket};
cmp_ok($r429, '<=', 5, "a handful of 429s at most ($r429)");
is($node->safe_psql('postgres',
	"SELECT count(*) FROM lhdiscord.outbox WHERE state = 'done' AND last_status = 204"), $N, 'all done with 204');
is(mock_get('/_mock/members/' . GUILD_ID . '/300000000000000777')->{roles}[0],
	'900000000000000121', 'members hold the new role');
is($node->safe_psql('postgres', 'SELECT rate_limited FROM lhdiscord.worker_status'), $r429,
	'worker_status counts the 429s');

$node->stop;
done_testing();
