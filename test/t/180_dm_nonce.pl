# DM exactly-once must not lean on job ids or on Discord's nonce window
# (issue 11, finding 9).  The mock matches nonces per author, as Discord
# does, and both clusters here post as the same bot:
#  1. a failover to a replica that lagged reissues job ids: every new DM is
#     still delivered (nonces are random per job, not "<id>-<part>");
#  2. a dump restored into another cluster restarts the ids: the same;
#  3. kill -9 of the postmaster during 3-part DMs, with a 0.1 s nonce window
#     so that only the durable per-part progress record can prevent a
#     duplicate: every part is delivered exactly once, and no part Discord
#     confirmed is posted again.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $N = 6;
my $rcpt = sub { sprintf('98%016d', $_[0]) };

# A query that never dies: undef when it fails.
sub fresh_mock
{
	my (%cfg) = @_;
	mock_post('/_mock/reset', \%cfg);
	setup_guild();
	mock_post('/_mock/users', { id => $rcpt->($_), username => "r$_" }) for 1 .. $N;
}

sub workers
{
	my ($node) = @_;
	return q_try($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lhdiscord worker'") // '';
}

# Queue DMs "<tag> <k>" to recipients 1..N; returns the job ids.
sub queue_dms
{
	my ($node, $tag) = @_;
	return split /\n/, $node->safe_psql('postgres', qq{
		INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload)
		  SELECT 'dm', '98' || lpad(g::text, 16, '0'), jsonb_build_object('content', '$tag ' || g)
		    FROM generate_series(1, $N) g
		RETURNING id;
	});
}

sub dms_done
{
	my ($node) = @_;
	return q_is($node, "SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'dm' AND state <> 'done'", '0');
}

sub message_counts
{
	my %n;
	$n{ $_->{content} }++ for @{ mock_get('/_mock/messages') };
	return \%n;
}

sub message_posts
{
	my ($since) = @_;
	return grep { $_->{method} eq 'POST' && $_->{path} =~ m{/channels/\d+/messages$} } @{ mock_requests($since // 0) };
}

sub overlap
{
	my ($a, $b) = @_;
	my %in = map { $_ => 1 } @$a;
	return grep { $in{$_} } @$b;
}

#
# 1. Failover to a replica that lagged.
#
start_mock();
fresh_mock();
my $primary = new_node('primary', streaming => 1, conf => { 'lhdiscord.poll_interval' => 60 });
$primary->backup('b');
# The standby starts from the primary's data directory, postgresql.conf
# included: the worker configuration comes with it.
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);
is(workers($standby), '0', 'no worker on the standby');
# The standby falls behind: replay paused, and cut off from the primary
# (a paused standby still receives WAL, and promotion would replay it; the
# cut comes first, as a paused startup process does not act on a reload).
$standby->safe_psql('postgres', "ALTER SYSTEM SET primary_conninfo = ''");
$standby->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok(wait_for(sub { q_is($standby, 'SELECT count(*) FROM pg_stat_wal_receiver', '0') }, 30),
	'the standby no longer receives WAL');
$standby->safe_psql('postgres', 'SELECT pg_wal_replay_pause()');

my @old_ids = queue_dms($primary, 'before failover');
is(scalar(@old_ids), $N, "$N DMs queued on the primary");
ok(wait_for(sub { dms_done($primary) }, 30), 'the primary delivered them');
my @old_posts = message_posts();
my %old_nonce = map { (($_->{nonce} // '') => 1) } @old_posts;
is(scalar(keys %old_nonce), $N, 'each posted with its own nonce');
$primary->stop('immediate');

$standby->promote;
is(q_try($standby, 'SELECT pg_is_in_recovery()'), 'f', 'the standby was promoted');
ok(wait_for(sub { workers($standby) eq '1' }, 30), 'the worker starts after promotion');
is(q_try($standby, "SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'dm'"), '0',
	'the new primary lagged: it never saw the delivered DMs');
my $seq = mock_get('/_mock/requests?since=999999999')->{last_seq};
my @new_ids = queue_dms($standby, 'after failover');
my @reused = overlap(\@old_ids, \@new_ids);
cmp_ok(scalar(@reused), '>', 0,
	'job ids were reissued (' . scalar(@reused) . ' of the new ids were used before the failover)');
ok(wait_for(sub { dms_done($standby) }, 30), 'the new primary finished the new DMs');
my $counts = message_counts();
is_deeply([ map { $counts->{"after failover $_"} // 0 } 1 .. $N ], [ (1) x $N ],
	'every DM queued after the failover was delivered, once');
is_deeply([ map { $counts->{"before failover $_"} // 0 } 1 .. $N ], [ (1) x $N ],
	'the DMs from before the failover exist once each');
is(scalar(@{ mock_get('/_mock/messages') }), 2 * $N, "exactly $N + $N messages");
my @new_posts = message_posts($seq);
is(scalar(grep { $old_nonce{ $_->{nonce} // '' } } @new_posts), 0, 'no nonce of the old primary was used again');
$standby->stop;

#
# 2. Dump and restore into another cluster.
#
fresh_mock();
my $src = new_node('dumpsrc', conf => { 'lhdiscord.poll_interval' => 60 });
my @src_ids = queue_dms($src, 'source');
ok(wait_for(sub { dms_done($src) }, 30), 'the source delivered its DMs');
my $dump = PostgreSQL::Test::Utils::tempdir() . '/src.dump';
$src->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $src->connstr('postgres') ], 'pg_dump');
$src->stop;
my $dst = new_node('dumpdst', no_extension => 1, conf => { 'lhdiscord.poll_interval' => 60 });
$dst->command_ok([ 'pg_restore', '--exit-on-error', '-d', $dst->connstr('postgres'), $dump ], 'pg_restore');
$dst->restart;
ok(wait_for(sub { workers($dst) eq '1' }, 30), 'the worker runs on the restored cluster');
$seq = mock_get('/_mock/requests?since=999999999')->{last_seq};
my @dst_ids = queue_dms($dst, 'restored');
cmp_ok(scalar(overlap(\@src_ids, \@dst_ids)), '>', 0, 'job ids restarted after the restore (some reused)');
ok(wait_for(sub { dms_done($dst) }, 30), 'the restored cluster finished its DMs');
$counts = message_counts();
is_deeply([ map { $counts->{"restored $_"} // 0 } 1 .. $N ], [ (1) x $N ],
	'every DM queued after the restore was delivered, once');
is(scalar(@{ mock_get('/_mock/messages') }), 2 * $N, "exactly $N + $N messages");
my %src_nonce = map { (($_->{nonce} // '') => 1) } grep { $_->{seq} <= $seq } message_posts();
my @dst_posts = message_posts($seq);
is(scalar(@dst_posts), $N, "the restored cluster posted $N messages");
is(scalar(grep { $src_nonce{ $_->{nonce} // '' } } @dst_posts), 0, 'no nonce of the source cluster was used again');
$dst->stop;

#
# 3. kill -9 of the postmaster during 3-part DMs.
#
# A 0.1 s nonce window: a part posted again after the restart is a second
# message, unless the worker knew it was delivered.  150 ms per call, so the
# kill lands while the jobs are between parts.
fresh_mock(nonce_window => 0.1, latency_ms => 150);
my $node = new_node('crash', conf => {
	'lhdiscord.request_timeout' => 30000,
	'lhdiscord.max_concurrency' => 8,
	'lhdiscord.poll_interval' => 60,
	restart_after_crash => 'on' });
# Part k of DM j: 1990 characters without whitespace, so that the parts are
# exactly these blocks, one per line.
my $part = sub { my $l = "DM$_[0]-P$_[1]-"; return $l . ('x' x (1990 - length($l))); };
my $content = sub { my $j = shift; return join("\n", map { $part->($j, $_) } 1 .. 3); };
cmp_ok(length($content->(1)), '>', 2 * 2000, 'the content is over 2 x 2000 characters');
$node->safe_psql('postgres', 'INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload) VALUES '
	  . join(', ', map { "('dm', '" . $rcpt->($_) . "', jsonb_build_object('content', '" . $content->($_) . "'))" } 1 .. $N));
ok(wait_for(sub { scalar(@{ mock_get('/_mock/messages') }) >= $N }, 30), 'delivery under way');
# From now on every post hangs (unanswered, not applied): the jobs stop
# between parts, with their earlier parts confirmed.
mock_post('/_mock/faults', { method => 'POST', path => '/channels/\d+/messages$', hang => JSON::PP::true, count => -1 });
my $t_fault = time();
sleep 2;
my %confirmed;    # "j-k" => nonce, parts Discord created and answered 200
for my $r (message_posts())
{
	next unless ($r->{status} // 0) == 200 && !$r->{fault} && $r->{t} < $t_fault;
	my ($j, $k) = ($r->{body}{content} // '') =~ /^DM(\d+)-P(\d)-/ or next;
	$confirmed{"$j-$k"} = $r->{nonce};
}
my %by_job;
$by_job{ (split /-/)[0] }++ for keys %confirmed;
my $snap = q_try($node, q{
	SELECT substring(payload->>'content' FROM '^DM([0-9]+)-') || ':' || state || ':' || coalesce(payload->>'parts_sent', '0')
	  FROM lhdiscord.outbox WHERE kind = 'dm' ORDER BY 1}) // '';
my %db = map { my ($j, $st, $ps) = split /:/; ($j => { state => $st, sent => $ps }) } split /\n/, $snap;
my @midway = grep { my $c = $by_job{$_} // 0; $c >= 1 && $c < 3 } 1 .. $N;
cmp_ok(scalar(@midway), '>', 0, 'the kill lands with DMs between parts (' . scalar(@midway) . ' jobs)');
is_deeply({ map { ($_ => $db{$_}{sent}) } @midway }, { map { ($_ => $by_job{$_}) } @midway },
	'each confirmed part is recorded (parts_sent) before the next one is sent');
my @children = split /\n/, $node->safe_psql('postgres', 'SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()');
$node->kill9;
my $t_kill = time();
ok(wait_for(sub { !grep { kill(0, $_) } @children }, 60), 'every child of the killed postmaster exited');
mock_delete('/_mock/faults');
$seq = mock_get('/_mock/requests?since=999999999')->{last_seq};
$node->start;
ok(wait_for(sub { dms_done($node) }, 60), 'after the restart every DM job is done');
$counts = message_counts();
my @want = map { my $j = $_; map { $part->($j, $_) } 1 .. 3 } 1 .. $N;
is(scalar(grep { ($counts->{$_} // 0) == 0 } @want), 0, 'every part of every DM was delivered');
is(scalar(grep { ($counts->{$_} // 0) > 1 } @want), 0, 'no part was delivered twice')
  or diag(join(', ', map { substr($_, 0, 8) . ' x' . $counts->{$_} } grep { ($counts->{$_} // 0) > 1 } @want));
is(scalar(@{ mock_get('/_mock/messages') }), 3 * $N, "exactly 3 x $N messages");
my @again = grep { my ($j, $k) = ($_->{body}{content} // '') =~ /^DM(\d+)-P(\d)-/; defined $j && exists $confirmed{"$j-$k"} }
  message_posts($seq);
is(scalar(@again), 0, 'no part Discord had confirmed before the kill was posted again');
my %per_nonce;
$per_nonce{ $_->{nonce} // '' }++ for message_posts();
is(scalar(grep { ($per_nonce{$_} // 0) != 1 } values %confirmed), 0, 'each confirmed nonce was posted exactly once');
like(q_try($node, "SELECT string_agg(DISTINCT nonce, ',') FROM lhdiscord.outbox WHERE kind = 'dm'") // '',
	qr/^[0-9a-f]{20}(,[0-9a-f]{20})*$/, 'the jobs carry random 20-hex nonces');
my ($anonce) = values %confirmed;
like($anonce // '', qr/^[0-9a-f]{20}-\d+$/, 'parts are posted with nonce <job nonce>-<part>');
$node->stop;

done_testing();
