# Discord down (502) while users are brigged: the brig completes at once in
# the database, the work waits with backoff, and converges when Discord is back.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

start_mock();
setup_guild(members => [ map { { id => "40000000000000000$_" } } 1 .. 3 ]);
my $node = new_node('down', conf => { 'lhdiscord.max_attempts' => 100 });
$node->safe_psql('postgres', q{
	SELECT lhdiscord.map_role('citizen', '900000000000000103');
	SELECT lhdiscord.map_role('verified', '900000000000000104');
	INSERT INTO lhdiscord.users (user_id, username, membership_level)
	  SELECT g, 'u' || g, 'citizen' FROM generate_series(1, 3) g;
	SELECT count(lhdiscord.link_account(g, '40000000000000000' || g, 'u' || g)) FROM generate_series(1, 3) g;
});
ok(wait_for(sub {
	$node->safe_psql('postgres', "SELECT count(*) FROM lhdiscord.outbox WHERE state = 'done'") eq '3' }, 30),
	'accounts converged');

mock_post('/_mock/config', { down => JSON::PP::true });
my $t0 = time();
$node->safe_psql('postgres', 'UPDATE lhdiscord.users SET in_brig = true');
my $took = time() - $t0;
cmp_ok($took, '<', 2, 'the brig statement returns at once while Discord is down');
is($node->safe_psql('postgres', "SELECT string_agg(DISTINCT status::text, ',') FROM lhdiscord.discord_accounts"),
	'brigged', 'every account is brigged immediately');

ok(wait_for(sub {
	$node->safe_psql('postgres',
		"SELECT count(*) FROM lhdiscord.outbox WHERE state = 'pending' AND attempts >= 2 AND last_status = 502") eq '3' }, 30),
	'the strips wait, retried with backoff (502 recorded)');
is_deeply(mock_get('/_mock/members/' . GUILD_ID . '/400000000000000001')->{roles},
	[ '900000000000000103', '900000000000000104' ], 'Discord still shows the roles');
like($node->safe_psql('postgres', 'SELECT last_error FROM lhdiscord.worker_status'), qr/502/,
	'worker_status shows the last error');
cmp_ok($node->safe_psql('postgres',
	"SELECT sum(waiting_for_retry) FROM lhdiscord.outbox_stats WHERE state = 'pending'"), '>', 0,
	'outbox_stats reports jobs waiting for retry');

mock_post('/_mock/config', { down => JSON::PP::false });
ok(wait_for(sub {
	$node->safe_psql('postgres', "SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'") eq '0' }, 30),
	'converged once Discord is back');
is_deeply(mock_get('/_mock/members/' . GUILD_ID . "/40000000000000000$_")->{roles}, [],
	"member $_ stripped") for 1 .. 3;

$node->stop;
done_testing();
