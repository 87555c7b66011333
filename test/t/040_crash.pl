# kill -9 of the worker, then of the postmaster, in the middle of a drain:
# after the restarts every job finishes, and no DM is delivered twice.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $N = 150;
start_mock();
setup_guild(members => [ map { { id => sprintf('5%017d', $_) } } 1 .. $N ]);
mock_post('/_mock/users', { id => sprintf('5%017d', $_), username => "u$_" }) for 1 .. $N;
my $node = new_node('crash',
	conf => { 'lhdiscord.max_concurrency' => 4, restart_after_crash => 'on' });
$node->safe_psql('postgres', qq{
	SELECT lhdiscord.map_role('traveler', '900000000000000101');
	INSERT INTO lhdiscord.users (user_id, username, membership_level)
	  SELECT g, 'u' || g, 'traveler' FROM generate_series(1, $N) g;
});
# Slow Discord down so that the kills land mid-drain.
mock_post('/_mock/config', { latency_ms => 40 });

sub queue_batch
{
	my ($tag) = @_;
	$node->safe_psql('postgres', qq{
		INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload)
		  SELECT 'dm', '5' || lpad(g::text, 17, '0'),
		         jsonb_build_object('content', '$tag message for user ' || g)
		    FROM generate_series(1, $N) g;
	});
}

sub delivered { return scalar(@{ mock_get('/_mock/messages') }); }

# 1. kill -9 the worker.
$node->safe_psql('postgres', qq{
	SELECT count(lhdiscord.link_account(g, '5' || lpad(g::text, 17, '0'), 'u' || g)) FROM generate_series(1, $N) g;
});
queue_batch('first');
ok(wait_for(sub { delivered() >= 20 }, 60), 'drain under way');
my $pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'lhdiscord worker'");
ok($pid =~ /^\d+$/, "worker pid $pid");
kill 'KILL', $pid;
ok(wait_for(sub {
	my $r = $node->psql('postgres', "SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'", stdout => \my $out);
	defined $out && $out eq '0' }, 120), 'after kill -9 of the worker, every job finished');

# 2. kill -9 the postmaster.
queue_batch('second');
ok(wait_for(sub { delivered() >= $N + 20 }, 60), 'second drain under way');
my @children = split /\n/, $node->safe_psql('postgres',
	'SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()');
$node->kill9;
# The orphaned children (the worker among them) notice the dead postmaster
# and exit; only then may a new postmaster start on the data directory.
ok(wait_for(sub { !grep { kill(0, $_) } @children }, 60),
	'every child of the killed postmaster exited (' . scalar(@children) . ' processes)');
$node->start;
ok(wait_for(sub {
	$node->safe_psql('postgres', "SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'") eq '0' }, 120),
	'after kill -9 of the postmaster, every job finished');

my $msgs = mock_get('/_mock/messages');
my %seen;
$seen{ $_->{content} }++ for @$msgs;
is(scalar(keys %seen), 2 * $N, 'every DM was delivered');
is(scalar(grep { $seen{$_} > 1 } keys %seen), 0, 'no DM was delivered twice');
is(scalar(@$msgs), 2 * $N, 'exactly one message per DM job');
like(slurp_file($node->logfile), qr/lhdiscord worker: \d+ outbox job\(s\) claimed by an ended process were queued again/,
	'claims of the killed worker were given back');
is($node->safe_psql('postgres', "SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'roles' AND state = 'done'"),
	$N, 'role convergences finished too');

$node->stop;
done_testing();
