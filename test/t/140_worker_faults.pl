# Worker faults (issue 11): each ERROR provoked for real inside the running
# worker -- a deadlock with the scheduled reconcile, DROP EXTENSION while it
# drains, a lock held past lhdiscord.worker_lock_timeout, a statement
# timeout, a job whose recording raises.  For each: the worker logs the
# error and carries on (same pid), the postmaster never crashes or restarts
# the cluster, a session opened before the fault still answers, the rest of
# the queue keeps flowing, and every job finishes once the cause is gone.
# Each scenario runs on a node of its own; every wait is bounded.
# LHD_FAULTS=ace (say) runs only those scenarios, for debugging.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

use constant {
	ROLE_TRAVELER => '900000000000000101',
	ROLE_RESIDENT => '900000000000000102',
	ROLE_ENTITLED => '900000000000000150',
};

my $N = 6;    # portal users (and Discord members) per scenario
my $only = $ENV{LHD_FAULTS} // 'abcde';
sub scenario { my ($x) = @_; return index($only, $x) >= 0; }

# Discord id of user $g in scenario $part.
sub did { my ($part, $g) = @_; return sprintf('6%d%016d', $part, $g); }

start_mock();
setup_guild(members => [ map { my $p = $_; map { { id => did($p, $_) } } 1 .. $N } 1 .. 5 ]);

# ---------- helpers ----------

# Run SQL; the output, or undef when it failed (the server may be gone).
sub sql
{
	my ($node, $query, $db) = @_;
	my ($out, $err, $timed_out);
	# psql may die writing to a server that is gone (IPC::Run: broken pipe).
	my $rc = eval {
		$node->psql($db // 'postgres', $query,
			stdout => \$out, stderr => \$err, timeout => 60, timed_out => \$timed_out);
	} // -1;
	$err = $@ if $rc == -1;
	if ($rc != 0 || $timed_out)
	{
		diag("query failed (rc $rc" . ($timed_out ? ', timed out' : '') . "): $query\n" . ($err // ''));
		return undef;
	}
	return $out;
}

sub sql_is
{
	my ($node, $query, $expect) = @_;
	my $v = sql($node, $query);
	return defined $v && $v eq $expect;
}

sub wait_sql
{
	my ($node, $query, $expect, $secs, $what) = @_;
	return wait_for(sub { sql_is($node, $query, $expect) }, $secs, $what);
}

# A psql session kept open across the scenario (background_psql).
my $bg_seq = 0;

sub bg_open
{
	my ($node) = @_;
	return $node->background_psql('postgres', on_error_stop => 0, timeout => 600);
}

sub bg_alive
{
	my ($s) = @_;
	return (eval { $s->{run}->pump_nb; 1 } && $s->{run}->pumpable) ? 1 : 0;
}

# Send SQL without waiting; returns a tag for bg_wait.
sub bg_send
{
	my ($s, $query) = @_;
	my $tag = 'lhd_bg_done_' . ++$bg_seq;
	$s->{stdin} .= "$query\n;\n\\echo '$tag'\n\\warn '$tag'\n";
	bg_alive($s);
	return $tag;
}

# Wait (at most $secs) for what bg_send sent; returns (finished, stdout, stderr).
sub bg_wait
{
	my ($s, $tag, $secs) = @_;
	my $finished = sub { $s->{stdout} =~ /$tag\r?\n/ && $s->{stderr} =~ /$tag\r?\n/ };
	wait_for(sub { my $alive = bg_alive($s); $finished->() || !$alive }, $secs // 30,
		"background statement $tag");
	my $fin = $finished->() ? 1 : 0;
	(my $out = $s->{stdout}) =~ s/\r?\n?$tag\r?\n.*//s;
	(my $err = $s->{stderr}) =~ s/\r?\n?$tag\r?\n.*//s;
	if ($fin)
	{
		$s->{stdout} = '';
		$s->{stderr} = '';
	}
	return ($fin, $out, $err);
}

# Run SQL in the session and wait; the output, or undef if it did not finish.
sub bg_run
{
	my ($s, $query, $secs) = @_;
	my ($fin, $out, $err) = bg_wait($s, bg_send($s, $query), $secs);
	diag("background session: $err") if $err ne '';
	return $fin ? $out : undef;
}

sub bg_close
{
	my ($s) = @_;
	eval { $s->{stdin} .= "\\q\n"; 1 };
	wait_for(sub { !bg_alive($s) }, 10, 'psql to quit');
	eval { $s->{run}->kill_kill(grace => 1) } if bg_alive($s);
	eval { $s->{run}->finish };
}

sub worker_pid
{
	my ($node) = @_;
	return sql($node, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'lhdiscord worker'") // '';
}

sub worker_errors
{
	my ($node) = @_;
	return sql($node, 'SELECT worker_errors FROM lhdiscord.worker_status');
}

sub log_since { my ($node, $off) = @_; return slurp_file($node->logfile, $off); }
sub log_size  { my ($node) = @_; return -s $node->logfile; }

# Did the worker ($pid) log a line matching $re since $off?
sub worker_logged
{
	my ($node, $off, $pid, $re) = @_;
	return scalar(grep { /\[$pid\]/ && /$re/ } split /\n/, log_since($node, $off));
}

# Mock messages whose content starts with "$tag ", by content.
sub delivered
{
	my ($tag) = @_;
	my %n;
	$n{ $_->{content} }++ for grep { ($_->{content} // '') =~ /^\Q$tag\E / } @{ mock_get('/_mock/messages') };
	return \%n;
}

sub member_roles
{
	my ($discord_id) = @_;
	my $m = mock_get('/_mock/members/' . GUILD_ID . "/$discord_id");
	return join(',', sort @{ $m->{roles} // [] });
}

# Users 1..$n with the traveler role, linked to Discord ids of $part.
sub setup_users
{
	my ($node, $part, $n) = @_;
	return sql($node, qq{
		BEGIN;
		SELECT lhdiscord.map_role('traveler', '@{[ROLE_TRAVELER]}');
		SELECT lhdiscord.map_role('resident', '@{[ROLE_RESIDENT]}');
		INSERT INTO lhdiscord.users (user_id, username, membership_level)
		  SELECT g, 'u' || g, 'traveler' FROM generate_series(1, $n) g;
		SELECT count(lhdiscord.link_account(g, '6$part' || lpad(g::text, 16, '0'), 'u' || g))
		  FROM generate_series(1, $n) g;
		COMMIT;
	});
}

# One DM per user in @users, content "<tag> to <user>".
sub queue_dms
{
	my ($node, $part, $tag, @users) = @_;
	my $list = join(',', @users);
	return sql($node, qq{
		INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload)
		  SELECT 'dm', '6$part' || lpad(g::text, 16, '0'), jsonb_build_object('content', '$tag to ' || g)
		    FROM unnest(ARRAY[$list]) g;
	});
}

sub all_done
{
	my ($node, $secs, $what) = @_;
	return wait_sql($node, "SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'", '0', $secs, $what);
}

# What every scenario must show once its fault is over.
sub survived
{
	my ($node, $label, $off, $pid_before, $pre) = @_;
	my @log = split /\n/, log_since($node, $off);
	my $none = sub {
		my ($re, $name) = @_;
		my @hits = grep { /$re/ } @log;
		is(scalar(@hits), 0, $name);
		diag("log: $hits[0]") if @hits;
	};
	$none->(qr/terminated by signal/, "$label: no process was terminated by a signal");
	$none->(qr/terminating any other active server processes/, "$label: the cluster was not restarted");
	$none->(qr/server process .* was terminated/, "$label: no server process was terminated");
	$none->(qr/all server processes terminated; reinitializing/, "$label: no crash recovery");
	is(worker_pid($node), $pid_before, "$label: the same worker process (pid $pid_before) runs before and after");
	my $answer = bg_alive($pre) ? bg_run($pre, 'SELECT 42', 20) : undef;
	is($answer, '42', "$label: a session opened before the fault still answers");
	bg_close($pre);
}

# ======================================================================
# a. Deadlock with the scheduled reconcile.
#
# The reconcile locks the users whose state changes in user_id order
# (lock_unchanged: SELECT ... ORDER BY user_id FOR UPDATE).  The
# application locks user 2, the snapshot changes so that users 1..3 must be
# suspended, the worker locks user 1 and blocks on user 2; then the
# application asks for user 1.  The worker's deadlock_timeout (2 s, server
# wide) fires long before the application's (60 s, its session), so the
# deadlock is detected -- and raised -- in the worker.
# ======================================================================
if (scenario('a'))
{
	my $part = 1;
	my $node = new_node('fault_deadlock', conf => {
		'lhdiscord.reconcile_interval' => 1,
		'lhdiscord.worker_lock_timeout' => 10000,
		'deadlock_timeout' => 2000 });
	my $members = sub {
		my ($roles) = @_;
		return '[' . join(',', map { sprintf('{"user": {"id": "%s"}, "roles": [%s]}', did($part, $_),
			join(',', map { "\"$_\"" } @$roles)) } 1 .. 3) . ']';
	};
	ok(defined sql($node, qq{
		BEGIN;
		SELECT lhdiscord.map_role('traveler', '@{[ROLE_TRAVELER]}');
		SELECT lhdiscord.map_role('hauling.member', '@{[ROLE_ENTITLED]}');
		INSERT INTO lhdiscord.users (user_id, username, membership_level)
		  SELECT g, 'u' || g, 'traveler' FROM generate_series(1, 3) g;
		SELECT count(lhdiscord.link_account(g, '6$part' || lpad(g::text, 16, '0'), 'u' || g))
		  FROM generate_series(1, 3) g;
		SELECT lhdiscord.load_snapshot('@{[ $members->([ROLE_TRAVELER, ROLE_ENTITLED]) ]}'::jsonb) > 0;
		COMMIT;
	}), 'a: three entitled users, linked, with a snapshot');
	ok(all_done($node, 30, 'initial convergences'), 'a: initial convergences done');
	# Several scheduled runs with the same inputs change nothing.
	sleep 2;
	is(sql($node, 'SELECT string_agg(status::text, \',\' ORDER BY user_id) FROM lhdiscord.users'),
		'active,active,active', 'a: the scheduled reconcile keeps entitled users active');

	my $pre = bg_open($node);
	is(bg_run($pre, 'SELECT 1'), '1', 'a: a session is open before the fault');
	my $pid = worker_pid($node);
	like($pid, qr/^\d+$/, "a: worker pid $pid");
	my $errors_before = worker_errors($node);
	my $off = log_size($node);

	my $app = bg_open($node);
	is(bg_run($app, "SET deadlock_timeout = '60s'; BEGIN; SELECT user_id FROM lhdiscord.users WHERE user_id = 2 FOR UPDATE;"),
		'2', 'a: the application holds user 2 (B)');
	# Entitlement lost: the next scheduled reconcile must suspend users 1..3.
	ok(defined sql($node, "SELECT lhdiscord.load_snapshot('@{[ $members->([ROLE_TRAVELER]) ]}'::jsonb)"),
		'a: a snapshot without the entitlement role');
	ok(defined queue_dms($node, $part, 'a-during', 1 .. 3), 'a: DMs queued');
	ok(wait_sql($node, qq{
		SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		 WHERE a.backend_type = 'lhdiscord worker' AND NOT l.granted AND a.wait_event_type = 'Lock'},
		't', 20, 'the worker to block on user 2'),
		'a: the scheduled reconcile blocks on user 2 (it holds user 1)');
	my $tag = bg_send($app, 'SELECT user_id FROM lhdiscord.users WHERE user_id = 1 FOR UPDATE;');
	my ($fin, $out, $err) = bg_wait($app, $tag, 30);
	ok($fin, 'a: the application\'s lock on user 1 (A) returns');
	ok(wait_for(sub { log_since($node, $off) =~ /deadlock detected/ }, 15, 'deadlock in the log'),
		'a: "deadlock detected" is logged');
	ok(worker_logged($node, $off, $pid, qr/deadlock detected/),
		'a: the deadlock was raised in the worker');
	is($out, '1', 'a: the application got user 1 once the worker gave up');
	is(bg_run($app, 'COMMIT; SELECT 1;'), '1', 'a: the application commits');
	bg_close($app);

	# The cause is gone: the next scheduled run suspends everyone.
	ok(wait_sql($node, 'SELECT string_agg(status::text, \',\' ORDER BY user_id) FROM lhdiscord.users',
		'suspended,suspended,suspended', 20, 'reconcile to suspend'),
		'a: after the deadlock the scheduled reconcile completes (users suspended)');
	is(sql($node, q{SELECT count(*) FROM lhdiscord.audit_log
		WHERE action = 'entitlement.reconcile' AND after_json->>'new_status' = 'suspended'}),
		'3', 'a: each suspension audited once');
	ok(defined queue_dms($node, $part, 'a-after', 1 .. 3), 'a: more DMs queued after the fault');
	ok(all_done($node, 30, 'every job'), 'a: every outbox job finished (done)');
	is(scalar(keys %{ delivered('a-during') }), 3, 'a: the DMs queued during the fault were delivered');
	is(scalar(keys %{ delivered('a-after') }), 3, 'a: the DMs queued after the fault were delivered');
	my $errors_after = worker_errors($node);
	ok(defined $errors_after && $errors_after =~ /^\d+$/, 'a: worker_status.worker_errors is reported');
	ok(defined $errors_before && defined $errors_after && $errors_after > $errors_before,
		'a: worker_status.worker_errors counted the recovered error ('
		  . ($errors_before // 'none') . ' -> ' . ($errors_after // 'none') . ')');
	ok(worker_logged($node, $off, $pid, qr/lhdiscord worker: /), 'a: the worker logged its recovery');
	survived($node, 'a', $off, $pid, $pre);
	$node->stop('fast', fail_ok => 1);
}

# ======================================================================
# b. DROP EXTENSION while the worker drains, then CREATE EXTENSION again.
# ======================================================================
if (scenario('b'))
{
	my $part = 2;
	my $node = new_node('fault_drop');
	ok(defined setup_users($node, $part, $N), 'b: users linked');
	ok(all_done($node, 30, 'initial convergences'), 'b: initial convergences done');
	my $pre = bg_open($node);
	is(bg_run($pre, 'SELECT 1'), '1', 'b: a session is open before the fault');
	my $pid = worker_pid($node);
	like($pid, qr/^\d+$/, "b: worker pid $pid");
	my $errors_before = worker_errors($node);
	my $off = log_size($node);

	# Slow Discord down so that the drop lands mid-drain, with jobs claimed.
	mock_post('/_mock/config', { latency_ms => 300 });
	ok(defined queue_dms($node, $part, 'b-before', (1 .. $N) x 10), 'b: 60 DMs queued');
	ok(wait_for(sub { scalar(keys %{ delivered('b-before') }) >= 2 }, 30, 'drain under way'),
		'b: the drain is under way');
	ok(defined sql($node, 'DROP EXTENSION lhdiscord CASCADE'), 'b: DROP EXTENSION while the worker runs');
	mock_post('/_mock/config', { latency_ms => 0 });

	# The worker notices, logs, then waits quietly.
	sleep 4;
	my $lines_settled = worker_logged($node, $off, $pid, qr/./);
	sleep 4;
	is(worker_logged($node, $off, $pid, qr/./), $lines_settled,
		'b: the waiting worker logs nothing more (no error loop)');
	cmp_ok($lines_settled, '<=', 12, "b: the worker logged a bounded number of lines ($lines_settled)");
	is(worker_logged($node, $off, $pid, qr/lhdiscord worker: [^\n]*(not installed|missing|waiting)/i), 1,
		'b: the worker says once that it waits for the extension');
	is(worker_pid($node), $pid, 'b: the worker is still running, same pid');

	ok(defined sql($node, 'CREATE EXTENSION lhdiscord'), 'b: CREATE EXTENSION again');
	ok(defined setup_users($node, $part, $N), 'b: users linked again');
	my $errors_after = worker_errors($node);
	ok(defined $errors_before && defined $errors_after && $errors_after > $errors_before,
		'b: worker_status.worker_errors counted the errors of the drop ('
		  . ($errors_before // 'none') . ' -> ' . ($errors_after // 'none') . ')');
	ok(defined queue_dms($node, $part, 'b-after', 1 .. $N), 'b: DMs queued after the re-creation');
	ok(all_done($node, 30, 'work after re-creation'), 'b: the work queued after CREATE EXTENSION is processed');
	is(scalar(keys %{ delivered('b-after') }), $N, 'b: every DM queued after the re-creation was delivered');
	is(join(' ', map { member_roles(did($part, $_)) } 1 .. $N), join(' ', (ROLE_TRAVELER) x $N),
		'b: the members hold their role');
	survived($node, 'b', $off, $pid, $pre);
	$node->stop('fast', fail_ok => 1);
}

# ======================================================================
# c. A lock held past lhdiscord.worker_lock_timeout: LOCK TABLE users IN
#    ACCESS EXCLUSIVE MODE for 8 s while convergences and DMs are queued.
# ======================================================================
if (scenario('c'))
{
	my $part = 3;
	my $node = new_node('fault_lock', conf => {
		'lhdiscord.worker_lock_timeout' => 500, 'lhdiscord.reconcile_interval' => 0 });
	ok(defined setup_users($node, $part, $N), 'c: users linked');
	ok(all_done($node, 30, 'initial convergences'), 'c: initial convergences done');
	my $pre = bg_open($node);
	is(bg_run($pre, 'SELECT 1'), '1', 'c: a session is open before the fault');
	my $pid = worker_pid($node);
	like($pid, qr/^\d+$/, "c: worker pid $pid");
	my $off = log_size($node);

	# Someone took the roles away on Discord; lhdiscord forgets what it knew,
	# so the convergences below must read the members and give them back.
	mock_post('/_mock/members', { guild_id => GUILD_ID, id => did($part, $_), roles => [] }) for 1 .. $N;
	ok(defined sql($node, 'DELETE FROM lhdiscord.role_state'), 'c: role state forgotten');

	my $lock = bg_open($node);
	is(bg_run($lock, "BEGIN; LOCK TABLE lhdiscord.users IN ACCESS EXCLUSIVE MODE; SELECT 'locked';"),
		'locked', 'c: the application locks lhdiscord.users in ACCESS EXCLUSIVE mode');
	my $locked_at = time();
	# Queued without touching users (no user_id, so no foreign key lookups).
	ok(defined sql($node, qq{
		INSERT INTO lhdiscord.outbox (kind, discord_user_id, reason)
		  SELECT 'roles', '6$part' || lpad(g::text, 16, '0'), 'lock test' FROM generate_series(1, $N) g;
	}), 'c: role convergences queued during the lock');
	ok(defined queue_dms($node, $part, 'c-during', 1 .. $N), 'c: DMs queued during the lock');
	ok(wait_for(sub { scalar(keys %{ delivered('c-during') }) == $N }, 6, 'DMs during the lock'),
		'c: every DM is delivered while users is locked (the queue keeps flowing)');
	is(sql($node, q{SELECT count(*) FROM pg_locks
		WHERE relation = 'lhdiscord.users'::regclass AND mode = 'AccessExclusiveLock' AND granted}),
		'1', 'c: ... and the lock was still held then');
	is(sql($node, "SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'roles' AND state = 'done' AND reason = 'lock test'"),
		'0', 'c: the role convergences wait while their rows are locked');
	ok(wait_for(sub { worker_logged($node, $off, $pid, qr/lock timeout/) }, 6, 'lock timeout in the log'),
		'c: the worker logs the lock timeout');
	my $left = 8 - (time() - $locked_at);
	usleep(int($left * 1e6)) if $left > 0;
	is(bg_run($lock, 'COMMIT; SELECT 1;'), '1', 'c: the lock is released after 8 s');
	bg_close($lock);

	ok(all_done($node, 30, 'role jobs after the lock'), 'c: after the lock every job finished (done)');
	is(sql($node, "SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('dead', 'failed')"), '0',
		'c: nothing was given up');
	is(join(' ', map { member_roles(did($part, $_)) } 1 .. $N), join(' ', (ROLE_TRAVELER) x $N),
		'c: every member got its role back');
	my $d = delivered('c-during');
	is(scalar(grep { $d->{$_} != 1 } keys %$d), 0, 'c: each DM delivered exactly once');
	survived($node, 'c', $off, $pid, $pre);
	$node->stop('fast', fail_ok => 1);
}

# ======================================================================
# d. A statement timeout: a superuser trigger on lhdiscord.dm_channels
#    (written when a DM records its new channel) sleeps 5 s; the worker's
#    statement timeout is 1 s.
# ======================================================================
if (scenario('d'))
{
	my $part = 4;
	my $node = new_node('fault_timeout', conf => {
		'lhdiscord.worker_statement_timeout' => 1000, 'lhdiscord.reconcile_interval' => 0 });
	ok(defined setup_users($node, $part, $N), 'd: users linked');
	ok(all_done($node, 30, 'initial convergences'), 'd: initial convergences done');
	my $pre = bg_open($node);
	is(bg_run($pre, 'SELECT 1'), '1', 'd: a session is open before the fault');
	my $pid = worker_pid($node);
	like($pid, qr/^\d+$/, "d: worker pid $pid");
	my $off = log_size($node);

	ok(defined sql($node, q{
		CREATE FUNCTION public.lhd_test_slow() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN PERFORM pg_sleep(5); RETURN NEW; END $$;
		CREATE TRIGGER lhd_test_slow BEFORE INSERT OR UPDATE ON lhdiscord.dm_channels
		  FOR EACH ROW EXECUTE FUNCTION public.lhd_test_slow();
	}), 'd: a slow trigger on lhdiscord.dm_channels');
	ok(defined queue_dms($node, $part, 'd-during', 1 .. $N), 'd: DMs queued (new channels)');
	ok(defined sql($node, "UPDATE lhdiscord.users SET membership_level = 'resident'"),
		'd: promotions queued');
	ok(wait_for(sub { worker_logged($node, $off, $pid, qr/statement timeout/) }, 20, 'statement timeout in the log'),
		'd: the worker logs the statement timeout');
	ok(wait_sql($node, "SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'roles' AND state <> 'done'", '0', 20,
		'promotions during the slow trigger'),
		'd: the promotions complete while DM recording times out (the other kind keeps flowing)');
	is(worker_pid($node), $pid, 'd: the worker survives the timeouts');
	ok(defined sql($node, 'DROP TRIGGER lhd_test_slow ON lhdiscord.dm_channels'), 'd: trigger dropped');

	ok(all_done($node, 30, 'every job after the trigger'), 'd: every job finished (done) once the trigger is gone');
	is(sql($node, "SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('dead', 'failed')"), '0',
		'd: nothing was given up');
	my $d = delivered('d-during');
	is(scalar(keys %$d), $N, 'd: every DM was delivered');
	is(scalar(grep { $d->{$_} != 1 } keys %$d), 0, 'd: each exactly once');
	is(join(' ', map { member_roles(did($part, $_)) } 1 .. $N), join(' ', (ROLE_RESIDENT) x $N),
		'd: every member was promoted');
	survived($node, 'd', $off, $pid, $pre);
	$node->stop('fast', fail_ok => 1);
}

# ======================================================================
# e. A job whose recording raises: a superuser trigger on
#    lhdiscord.role_state refuses every write.
# ======================================================================
if (scenario('e'))
{
	my $part = 5;
	my $node = new_node('fault_raise', conf => { 'lhdiscord.reconcile_interval' => 0 });
	ok(defined setup_users($node, $part, $N), 'e: users linked');
	ok(all_done($node, 30, 'initial convergences'), 'e: initial convergences done');
	my $pre = bg_open($node);
	is(bg_run($pre, 'SELECT 1'), '1', 'e: a session is open before the fault');
	my $pid = worker_pid($node);
	like($pid, qr/^\d+$/, "e: worker pid $pid");
	my $off = log_size($node);
	my $last_job = sql($node, 'SELECT max(id) FROM lhdiscord.outbox');

	ok(defined sql($node, q{
		CREATE FUNCTION public.lhd_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'lhd test: role_state refuses writes'; END $$;
		CREATE TRIGGER lhd_test_refuse BEFORE INSERT OR UPDATE OR DELETE ON lhdiscord.role_state
		  FOR EACH ROW EXECUTE FUNCTION public.lhd_test_refuse();
	}), 'e: a raising trigger on lhdiscord.role_state');
	ok(defined sql($node, "UPDATE lhdiscord.users SET membership_level = 'resident'"), 'e: promotions queued');
	ok(defined queue_dms($node, $part, 'e-during', 1 .. $N), 'e: DMs queued');
	ok(wait_for(sub { worker_logged($node, $off, $pid, qr/role_state refuses writes/) }, 20, 'the error in the log'),
		'e: the worker logs the error of the recording');
	ok(wait_for(sub { worker_logged($node, $off, $pid, qr/role_state refuses writes/) >= 3 }, 30, 'three errors'),
		'e: the promotions are retried: their recording failed at least three times');
	ok(wait_sql($node, "SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'dm' AND state <> 'done'", '0', 20,
		'DMs during the raising trigger'),
		'e: the DMs complete while role recording raises');
	is(scalar(keys %{ delivered('e-during') }), $N, 'e: every DM was delivered');
	is(sql($node, "SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'roles' AND id > $last_job"), $N,
		'e: one promotion per member was queued');
	is(sql($node, "SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'roles' AND id > $last_job AND state IN ('done', 'dead', 'failed')"),
		'0', 'e: the promotions whose recording fails are neither done nor given up');
	is(worker_pid($node), $pid, 'e: the worker survives the errors');
	ok(defined sql($node, 'DROP TRIGGER lhd_test_refuse ON lhdiscord.role_state'), 'e: trigger dropped');

	ok(all_done($node, 30, 'every job after the trigger'), 'e: every job finished (done) once the trigger is gone');
	is(sql($node, "SELECT count(*) FROM lhdiscord.role_state WHERE role_ids = ARRAY['@{[ROLE_RESIDENT]}']"), $N,
		'e: the role state is recorded');
	is(join(' ', map { member_roles(did($part, $_)) } 1 .. $N), join(' ', (ROLE_RESIDENT) x $N),
		'e: every member was promoted');
	survived($node, 'e', $off, $pid, $pre);
	$node->stop('fast', fail_ok => 1);
}

done_testing();
