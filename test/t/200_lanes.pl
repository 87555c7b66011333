# Priority lanes (issue 13), real worker against the mock with Discord-like
# limits: global 50/s, the role add/remove bucket 10 per second per guild
# (what Discord sends on that route: X-RateLimit-Limit 10, a fixed window),
# 10/s on the member and DM-channel routes, 5 per 5 s per DM channel.
#  1. A role_map change queues 2,000 bulk convergences (one PUT each: 200 s
#     of calls at the role bucket), and only for the members it affects.
#  2. While that backlog stands, a brig strip reaches the mock within 2 s of
#     the commit, and a DM within 3 s.
#  3. A managed role added by hand on Discord is gone after a brig, and
#     separately after an unlink (an urgent removal reads the member first).
#  4. A steady trickle of urgent work (a brig or release every 0.5 s) does
#     not stop the bulk lane; every strip of the trickle is fast too; the
#     whole backlog finishes within a bound, with no 429 after its first
#     second (bucket resets are treated with a margin).
#  5. outbox_stats shows lane, lane_backlog, lane_send_rate and
#     lane_drain_estimate with plausible values during the drain;
#     worker_status.serving_lane names a lane.
#  6. Re-running the same mappings (map_role, INSERT ... ON CONFLICT DO
#     NOTHING / DO UPDATE, UPDATE ... SET discord_role_id = discord_role_id)
#     queues nothing; changing staff_engineer's id queues only the engineers
#     and the member whose last applied state holds the old id, and the old
#     id is taken off them.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $NB = 2000;                      # bulk members: users 1 .. $NB
my ($B, $D, $H, $U, $X) = (2001, 2002, 2003, 2004, 2005);
my @TRICKLE = (2011 .. 2018);
my @ENG = (2101 .. 2120);
my $LAST = 2120;
my %R = (traveler => '900000000000000101', resident => '900000000000000102',
	verified => '900000000000000104', rank => '900000000000000121',
	eng_old => '900000000000000113', eng_new => '900000000000000119');
my $G = GUILD_ID;

sub did { return sprintf('5%017d', $_[0]); }

sub mock_seq { return mock_get('/_mock/requests?since=999999999999')->{last_seq}; }

sub roles_of { return [ sort @{ mock_get("/_mock/members/$G/" . did($_[0]))->{roles} // [] } ]; }

# Role DELETEs of a member recorded after seq $since: [[role, t], ...].
sub deletes_of
{
	my ($uid, $since) = @_;
	my $prefix = "/api/v10/guilds/$G/members/" . did($uid) . '/roles/';
	return [ map { [ (split m{/}, $_->{path})[-1], $_->{t} ] }
		  grep { $_->{method} eq 'DELETE' && ($_->{status} // 0) == 204 }
		  @{ mock_requests($since, $prefix) } ];
}

# Run SQL and return the server clock (epoch) right after its commit.
sub commit_at
{
	my ($node, $sql) = @_;
	my $out = $node->safe_psql('postgres', "$sql; SELECT extract(epoch FROM clock_timestamp())");
	my @l = split /\n/, $out;
	return $l[-1] + 0;
}

sub live_of
{
	my ($node, $uid) = @_;
	return q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE user_id = $uid AND state IN ('pending', 'in_flight')");
}

start_mock();
mock_post('/_mock/config', { record_limit => 100_000 });
setup_guild(members => [
	(map { { id => did($_), roles => [ $R{traveler}, $R{verified} ] } } 1 .. 2099),
	(map { { id => did($_), roles => [ $R{traveler}, $R{verified}, $R{eng_old} ] } } @ENG) ]);
my $node = new_node('lanes', conf => { 'lhdiscord.global_rate_limit' => 50 });

# Everyone linked and converged first (the mock holds the desired roles, so
# each link reads the member and sends nothing else); the bulk members have
# rank jr_crew, whose role is not mapped yet.
$node->safe_psql('postgres', qq{
	SELECT lhdiscord.map_role('traveler', '$R{traveler}');
	SELECT lhdiscord.map_role('verified', '$R{verified}');
	SELECT lhdiscord.map_role('resident', '$R{resident}');
	SELECT lhdiscord.map_role('staff_engineer', '$R{eng_old}');
	INSERT INTO lhdiscord.users (user_id, username, membership_level, staff_rank)
	  SELECT g, 'u' || g, 'traveler', CASE WHEN g <= $NB THEN 'jr_crew' ELSE 'none' END::lhdiscord.staff_rank
	    FROM generate_series(1, $LAST) g WHERE g <= $X OR g BETWEEN 2011 AND 2018 OR g >= 2101;
	UPDATE lhdiscord.users SET staff_department = 'engineer' WHERE user_id >= 2101;
	UPDATE lhdiscord.users SET notify_discord = true WHERE user_id = $D;
	SELECT count(lhdiscord.link_account(user_id, '5' || lpad(user_id::text, 17, '0'), 'u' || user_id))
	  FROM lhdiscord.users;
}, timeout => 600);
ok(wait_for(sub { (q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight')") // 1) eq '0' },
	180, 'the links'), 'every link converged');
is(q_try($node, 'SELECT count(*) FROM lhdiscord.role_state'), $NB + 5 + 8 + 20, 'every member has a known role state');

# Discord-like limits from here on.
mock_post('/_mock/config', {
	global_limit => 50,
	buckets => {
		'PUT /guilds/{guild_id}/members/{user_id}/roles/{role_id}' => { limit => 10, window => 1.0 },
		'GET /guilds/{guild_id}/members/{user_id}' => { limit => 10, window => 1.0 },
		'POST /users/@me/channels' => { limit => 10, window => 1.0 },
		'POST /channels/{channel_id}/messages' => { limit => 5, window => 5.0 } } });

# 1. The bulk backlog.
my $before_map = $node->safe_psql('postgres', 'SELECT max(id) FROM lhdiscord.outbox');
my $bulk_where = "kind = 'roles' AND id > $before_map AND user_id <= $NB";
my $map_seq = mock_seq();
my $t_map = commit_at($node, "SELECT lhdiscord.map_role('rank_jr_crew', '$R{rank}')");
is(q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'roles' AND id > $before_map"), $NB,
	"the new mapping queued exactly the $NB members with that rank");
is(q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE $bulk_where AND lane = 'bulk'"), $NB,
	'they are in the bulk lane');
sleep 5;
my $done5 = q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE $bulk_where AND state = 'done'") // 0;
cmp_ok($done5, '>=', 10, "the bulk lane is being served ($done5 done after 5 s)");
cmp_ok($done5, '<=', $NB - 1500, 'and a large backlog stands');

# 2. A brig, then a DM, while the backlog stands.
is_deeply(roles_of($B), [ sort $R{traveler}, $R{verified} ], 'the member to brig holds its roles');
my $seq = mock_seq();
my $t_brig = commit_at($node, "UPDATE lhdiscord.users SET in_brig = true WHERE user_id = $B");
is(q_try($node, "SELECT lane FROM lhdiscord.outbox WHERE user_id = $B ORDER BY id DESC LIMIT 1"), 'urgent',
	'the strip is in the urgent lane');
ok(wait_for(sub { @{ deletes_of($B, $seq) } >= 2 }, 30, 'the strip'), 'the strip reached the mock');
my $del = deletes_of($B, $seq);
is_deeply([ sort map { $_->[0] } @$del ], [ sort $R{traveler}, $R{verified} ], 'both managed roles were deleted');
my $lat = (sort { $b <=> $a } map { $_->[1] - $t_brig } @$del)[0] // 999;
cmp_ok($lat, '<=', 2.0, sprintf('the strip reached the mock %.3f s after the commit (<= 2 s)', $lat));

$seq = mock_seq();
my $t_dm = commit_at($node, "SELECT lhdiscord.notify($D, 'NewTicketNotification', 'Your ticket #1 was answered.')");
is(q_try($node, "SELECT lane FROM lhdiscord.outbox WHERE kind = 'dm' AND user_id = $D"), 'interactive',
	'the DM is in the interactive lane');
my $msg;
ok(wait_for(sub {
	($msg) = grep { $_->{method} eq 'POST' && $_->{path} =~ m{/messages$} && ($_->{status} // 0) == 200 }
	  @{ mock_requests($seq, '/api/v10/channels/') };
	defined $msg }, 30, 'the DM'), 'the DM reached the mock');
my $dm_lat = $msg ? $msg->{t} - $t_dm : 999;
my ($chan) = grep { $_->{method} eq 'POST' && $_->{path} =~ m{/users/\@me/channels$} } @{ mock_requests($seq, '/api/v10/users/') };
diag(sprintf('DM: channel created %.3f s, message posted %.3f s after the commit',
	$chan ? $chan->{t} - $t_dm : -1, $dm_lat));
cmp_ok($dm_lat, '<=', 3.0, sprintf('the DM reached the mock %.3f s after the commit (<= 3 s)', $dm_lat));

# 3. Managed roles added by hand on Discord are removed by a brig and by an
# unlink, though lhdiscord believes it gave only traveler and verified.
for my $uid ($H, $U)
{
	mock_post('/_mock/members', { guild_id => $G, id => did($uid), roles => [ $R{traveler}, $R{verified}, $R{resident} ] });
}
is(q_try($node, "SELECT role_ids::text FROM lhdiscord.role_state WHERE discord_user_id = '" . did($H) . "'"),
	"{$R{traveler},$R{verified}}", 'lhdiscord believes the member holds traveler and verified only');
$seq = mock_seq();
$node->safe_psql('postgres', "UPDATE lhdiscord.users SET in_brig = true WHERE user_id = $H");
ok(wait_for(sub { (live_of($node, $H) // 1) eq '0' }, 15, 'the brig of the hand-decorated member'),
	'the brig converged while the backlog stands');
is_deeply(roles_of($H), [], 'after the brig the hand-added managed role is gone too');
ok((grep { $_->[0] eq $R{resident} } @{ deletes_of($H, $seq) }), 'a DELETE of the hand-added role was sent');
my $acct = $node->safe_psql('postgres', "SELECT id FROM lhdiscord.discord_accounts WHERE user_id = $U");
$node->safe_psql('postgres', "SELECT lhdiscord.unlink_account($U, $acct)");
ok(wait_for(sub { (live_of($node, $U) // 1) eq '0' }, 15, 'the unlink'), 'the unlink converged while the backlog stands');
is_deeply(roles_of($U), [], 'after the unlink the hand-added managed role is gone too');
is(q_try($node, "SELECT lane FROM lhdiscord.outbox WHERE user_id = $U ORDER BY id DESC LIMIT 1"), 'urgent',
	'the unlink strip was urgent');

# 5 (first look). Lane statistics while the backlog drains.
sub check_stats
{
	my ($when) = @_;
	my $backlog = q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE lane = 'bulk' AND state IN ('pending', 'in_flight')") // -1;
	my $row = q_try($node, q{SELECT lane_backlog, lane_send_rate, extract(epoch FROM lane_drain_estimate)
	  FROM lhdiscord.outbox_stats WHERE lane = 'bulk' LIMIT 1}) // '';
	my ($lb, $rate, $est) = split /\|/, $row;
	ok(defined $lb && length($lb) && abs($lb - $backlog) <= 50, "$when: lane_backlog of bulk (" . ($lb // 'n/a') . ") is the bulk backlog ($backlog)");
	ok(defined $rate && length($rate) && $rate > 0.5 && $rate <= 12,
		"$when: lane_send_rate of bulk (" . ($rate // 'n/a') . ' jobs/s) is plausible under a 10/s bucket');
	ok(defined $est && length($est) && $est >= 30 && $est <= 7200,
		"$when: lane_drain_estimate of bulk (" . ($est // 'n/a') . ' s) is plausible');
	ok(defined $est && length($est) && defined $rate && length($rate) && $rate > 0 && $est >= 0.33 * $lb / $rate && $est <= 3 * $lb / $rate,
		"$when: lane_drain_estimate agrees with backlog / rate");
	like(q_try($node, 'SELECT serving_lane FROM lhdiscord.worker_status') // '', qr/^(urgent|interactive|bulk)$/,
		"$when: worker_status.serving_lane names a lane");
	my $lanes = q_try($node, "SELECT string_agg(DISTINCT lane::text, ',' ORDER BY lane::text) FROM lhdiscord.outbox_stats") // '';
	like($lanes, qr/bulk/, "$when: outbox_stats has a lane column ($lanes)");
}
check_stats('early in the drain');

# 4. The trickle: a brig or a release every 0.5 s for 24 s (eight members,
# each brigged and released three times, 4 s apart); the bulk lane must
# keep going.
my $done_before = q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE $bulk_where AND state = 'done'") // 0;
my $tr_seq = mock_seq();
my $t_tr = time();
my (@brigs, %brigged);
for my $i (0 .. 47)
{
	my $uid = $TRICKLE[ $i % @TRICKLE ];
	my $on = $brigged{$uid} ? 'false' : 'true';
	$brigged{$uid} = !$brigged{$uid};
	my $t = commit_at($node, "UPDATE lhdiscord.users SET in_brig = $on WHERE user_id = $uid");
	push @brigs, [ $uid, $t ] if $on eq 'true';
	my $next = $t_tr + 0.5 * ($i + 1);
	my $wait = $next - time();
	usleep(int($wait * 1e6)) if $wait > 0;
}
my $t_tr_end = time();
sleep 3;                            # the last strips arrive
my $done_after = q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE $bulk_where AND state = 'done'") // 0;
my $during = $done_after - $done_before;
cmp_ok($during / ($t_tr_end - $t_tr + 3), '>=', 2,
	sprintf('the bulk lane kept going during the trickle (%d jobs in %.1f s)', $during, $t_tr_end - $t_tr + 3));
my $gaps = q_try($node, sprintf(q{SELECT count(*) FROM generate_series(0, 3) k
  WHERE NOT EXISTS (SELECT 1 FROM lhdiscord.outbox WHERE %s AND state = 'done'
                      AND finished_at >= to_timestamp(%f + 5 * k) AND finished_at < to_timestamp(%f + 5 * k + 5))},
	$bulk_where, $t_tr, $t_tr));
is($gaps, '0', 'no 5-second stretch of the trickle without a finished bulk job');
my $worst = 0;
my @lats;
my $all = mock_requests($tr_seq, "/api/v10/guilds/$G/members/");
for my $ev (@brigs)
{
	my ($uid, $t) = @$ev;
	my $p = "/api/v10/guilds/$G/members/" . did($uid) . '/roles/';
	my @d = map { $_->{t} } grep { $_->{method} eq 'DELETE' && ($_->{status} // 0) == 204
		  && index($_->{path}, $p) == 0 && $_->{t} >= $t && $_->{t} < $t + 4 } @$all;
	my $l = @d >= 2 ? (sort { $b <=> $a } @d)[0] - $t : 999;
	$worst = $l if $l > $worst;
	push @lats, sprintf('%d:%s', $uid, @d >= 2 ? sprintf('%.2f', $l) : scalar(@d) . ' DELETEs in 4 s');
	next if $l <= 2.0;
	# What happened to a slow strip: the member's requests after the commit.
	my $m = "/api/v10/guilds/$G/members/" . did($uid);
	diag(sprintf('slow strip of %d: %s', $uid, join(', ', map { sprintf('%s %s +%.3f s %s', $_->{method},
		substr($_->{path}, length($m)) || '(member)', $_->{t} - $t, $_->{status} // 'none') }
		grep { index($_->{path}, $m) == 0 && $_->{t} >= $t && $_->{t} < $t + 4 } @$all)));
}
diag('trickle strip latencies (s): ' . join(' ', @lats));
my $mst = mock_stats();
diag("mock so far: $mst->{bot_requests} bot requests, 429s: $mst->{rate_limited_bucket} bucket, "
	. "$mst->{rate_limited_global} global; max_per_second $mst->{max_per_second}");
cmp_ok($worst, '<=', 2.0, sprintf('every strip of the trickle (%d brigs) reached the mock within 2 s (worst %.3f s)',
	scalar(@brigs), $worst));

# 5 (second look), then the whole backlog must finish within a bound: the
# role bucket allows 200 s for it; 1.6 x that plus a minute.
check_stats('during the trickle\'s aftermath');
my $deadline = $t_map + $NB / 10 * 1.6 + 60;
ok(wait_for(sub { (q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight')") // 1) eq '0' },
	($deadline - time() > 30 ? $deadline - time() : 30), 'the bulk backlog'),
	'the whole bulk backlog finished within the bound');
my $t_bulk = q_try($node, "SELECT extract(epoch FROM max(finished_at)) FROM lhdiscord.outbox WHERE $bulk_where") // 0;
diag(sprintf('the bulk backlog took %.1f s', $t_bulk - $t_map));
is(q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE $bulk_where AND state = 'done'"), $NB, 'every bulk job done');
# Steady state under the 10/s role bucket: a bucket's reset is treated with
# a margin, so no request arrives just before Discord resets it.
my $drain = [ grep { $_->{path} =~ m{^/api/v10/} } @{ mock_requests($map_seq) } ];
my $t_first = @$drain ? $drain->[0]{t} : 0;
my @r429 = grep { ($_->{status} // 0) == 429 && $_->{t} > $t_first + 1.0 } @$drain;
is(scalar(@r429), 0, 'no 429 after the first second of the drain (' . scalar(@$drain) . ' requests)');
diag(sprintf('429 at +%.3f s: %s %s', $_->{t} - $t_first, $_->{method}, $_->{path})) for @r429;
is_deeply(roles_of($_), [ sort $R{traveler}, $R{verified}, $R{rank} ], "bulk member $_ holds the new rank role")
  for (1, 1000, $NB);
is_deeply(roles_of($B), [], 'the brigged member stays stripped');
is_deeply(roles_of($_), [ sort $R{traveler}, $R{verified} ], "trickle member $_ ends released with its roles")
  for @TRICKLE;

# 6. Mappings re-run as a deploy script would: nothing is queued.
# Rows plus generations: a change folded into a live job bumps its generation.
sub outbox_count { return $node->safe_psql('postgres', 'SELECT count(*) + coalesce(sum(generation), 0) FROM lhdiscord.outbox'); }
sub drained
{
	my ($what) = @_;
	return wait_for(sub { (q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight')") // 1) eq '0' },
		120, $what);
}
my @noop = (
	"SELECT lhdiscord.map_role('traveler', '$R{traveler}')",
	"INSERT INTO lhdiscord.role_map (key, discord_role_id) VALUES ('traveler', '$R{traveler}'), ('verified', '$R{verified}'), ('staff_engineer', '$R{eng_old}') ON CONFLICT (key) DO NOTHING",
	"INSERT INTO lhdiscord.role_map (key, discord_role_id) VALUES ('traveler', '$R{traveler}'), ('rank_jr_crew', '$R{rank}') ON CONFLICT (key) DO UPDATE SET discord_role_id = EXCLUDED.discord_role_id",
	'UPDATE lhdiscord.role_map SET discord_role_id = discord_role_id');
for my $sql (@noop)
{
	my $n0 = outbox_count();
	$node->safe_psql('postgres', $sql);
	is(outbox_count(), $n0, "queues nothing: $sql");
	drained('what it queued');      # (nothing changes on Discord: no calls)
}

# A member whose last applied state still holds the engineer role (a stale
# state, as a failover can leave), though no longer an engineer.
$node->safe_psql('postgres', "UPDATE lhdiscord.role_state SET role_ids = array_append(role_ids, '$R{eng_old}') WHERE discord_user_id = '" . did($X) . "'");
mock_post('/_mock/members', { guild_id => $G, id => did($X), roles => [ $R{traveler}, $R{verified}, $R{eng_old} ] });
my $max = $node->safe_psql('postgres', 'SELECT max(id) FROM lhdiscord.outbox');
$node->safe_psql('postgres', "SELECT lhdiscord.map_role('staff_engineer', '$R{eng_new}')");
is($node->safe_psql('postgres', "SELECT string_agg(user_id::text, ',' ORDER BY user_id) FROM lhdiscord.outbox WHERE id > $max"),
	join(',', $X, @ENG), 'a new staff_engineer id queues only the engineers and the member holding the old id');
ok(wait_for(sub { (q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight')") // 1) eq '0' },
	60, 'the engineers'), 'the engineers converged');
my @lack = grep { my $r = roles_of($_); !grep { $_ eq $R{eng_new} } @$r } @ENG;
is(scalar(@lack), 0, 'every engineer holds the new engineer role' . (@lack ? " (not: @lack)" : ''));
my @old = grep { my $r = roles_of($_); grep { $_ eq $R{eng_old} } @$r } @ENG;
is(scalar(@old), 0, 'no engineer holds the old engineer role any more' . (@old ? " (still: @old)" : ''));
is_deeply(roles_of($X), [ sort $R{traveler}, $R{verified} ], 'the old engineer id is taken off the member that held it');
is_deeply(roles_of(1), [ sort $R{traveler}, $R{verified}, $R{rank} ], 'a member the change does not affect is untouched');

$node->stop;
done_testing();
