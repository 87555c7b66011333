# The worker never runs on a hot standby; after promotion it starts there and
# drains the queue it inherited (including jobs the old primary had claimed).
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

start_mock();
setup_guild(members => [ map { { id => "80000000000000000$_" } } 1 .. 5 ]);
my $primary = new_node('primary', streaming => 1);
$primary->safe_psql('postgres', q{
	SELECT lhdiscord.map_role('traveler', '900000000000000101');
	INSERT INTO lhdiscord.users (user_id, username, membership_level)
	  SELECT g, 'u' || g, 'traveler' FROM generate_series(1, 5) g;
});
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;

# Work queued on the primary while Discord is down, so it is still pending
# (or claimed) when the primary goes away.
mock_post('/_mock/config', { down => JSON::PP::true });
$primary->safe_psql('postgres',
	q{SELECT count(lhdiscord.link_account(g, '80000000000000000' || g, 'u' || g)) FROM generate_series(1, 5) g});
$primary->wait_for_catchup($standby);

sub workers
{
	my ($n) = @_;
	return $n->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lhdiscord worker'");
}
is(workers($primary), '1', 'the primary runs the worker');
sleep 2;
is(workers($standby), '0', 'no worker on the hot standby');
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'standby in recovery');
is($standby->safe_psql('postgres', "SELECT count(*) FROM lhdiscord.outbox"), '5', 'the queue is replicated');
is(mock_stats()->{by_status}{204} // 0, 0, 'nothing delivered yet');

# Failover: the primary dies, the standby is promoted, Discord comes back.
$primary->stop('immediate');
mock_post('/_mock/config', { down => JSON::PP::false });
$standby->promote;
ok(wait_for(sub { workers($standby) eq '1' }, 30), 'the worker starts after promotion');
ok(wait_for(sub {
	$standby->safe_psql('postgres', "SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'") eq '0' }, 60),
	'the new primary drains every job');
is_deeply(mock_get('/_mock/members/' . GUILD_ID . '/800000000000000003')->{roles}, ['900000000000000101'],
	'roles applied after failover');

$standby->stop;
done_testing();
