# Without shared_preload_libraries: every SQL function that does not need the
# worker works, and worker_status says why nothing drains.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('nopreload');
$node->init;
$node->append_conf('postgresql.conf', "lhdiscord.guild_id = '" . GUILD_ID . "'\n"
	  . "lhdiscord.encryption_key = '" . TEST_KEY . "'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION lhdiscord');
is($node->safe_psql('postgres', 'SELECT running, preloaded FROM lhdiscord.worker_status'), 'f|f',
	'worker_status: no worker, not preloaded');
$node->safe_psql('postgres', q{
	SELECT lhdiscord.map_role('traveler', '900000000000000101');
	INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES (1, 'alice', 'traveler');
});
is($node->safe_psql('postgres',
	q{SELECT status FROM lhdiscord.link_account(1, '100000000000000001', 'alice_d', NULL, NULL, 'secret-token')}),
	'active', 'link_account works (with token encryption)');
is($node->safe_psql('postgres', 'SELECT lhdiscord.can_link(1), lhdiscord.has_discord_linked(1)'), 'f|t',
	'can_link / has_discord_linked work');
is($node->safe_psql('postgres', "SELECT count(*) FROM lhdiscord.outbox WHERE state = 'pending'"), '1',
	'work is queued');
is($node->safe_psql('postgres', q{SET lhdiscord.api_mode = 'fake'; SELECT lhdiscord.drain_outbox()}), '1',
	'drain_outbox works in the session');
is($node->safe_psql('postgres', 'SELECT count(*) FROM lhdiscord.fake_calls'), '2', 'GET + PUT recorded');
$node->safe_psql('postgres', 'UPDATE lhdiscord.users SET in_brig = true');
is($node->safe_psql('postgres', 'SELECT status FROM lhdiscord.discord_accounts'), 'brigged', 'triggers work');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lhdiscord worker'"),
	'0', 'no worker process');
$node->stop;
done_testing();
