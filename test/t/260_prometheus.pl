# Prometheus (issue 15): Debian's prometheus-postgres-exporter, started for
# real with examples/prometheus/lhdiscord-queries.yaml against a node whose
# worker has talked to the mock Discord (responses of every status class,
# 429s, a request left unanswered, a 403, a recovered worker error, a member
# scan, a reconcile with every outcome, an aborted one, an exemption, a held
# snapshot, and at last a 401 that pauses sending with jobs left pending),
# connected as a login role granted only lhdiscord_monitor.  /metrics,
# scraped on loopback once the node is quiescent, carries every lhdiscord
# metric with the value the database holds (read as the same role right
# before and after the scrape), with its type and labels.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use IO::Socket::INET;
use POSIX ':sys_wait_h';
use Time::HiRes qw(time usleep);

use constant {
	ROLE_TRAVELER => '900000000000000101',
	ROLE_RESIDENT => '900000000000000102',
	ROLE_ENTITLED => '900000000000000131',
	EXPORTER => $ENV{LHD_PG_EXPORTER} // '/usr/bin/prometheus-postgres-exporter',
	MONITOR => 'lhd_prom',
};

my $queries = "$FindBin::RealBin/../../examples/prometheus/lhdiscord-queries.yaml";

# Not installed is a failure, not a skip: the suite installs the package
# (test/lib.sh, LHD_SUITE_PACKAGES).
ok(-x EXPORTER, 'the exporter is installed: ' . EXPORTER)
  or diag('install prometheus-postgres-exporter (test/run does)');
ok(-r $queries, "the queries file is there: $queries");
unless (-x EXPORTER && -r $queries)
{
	done_testing();
	exit 1;
}
my $exporter_version = `@{[ EXPORTER ]} --version 2>&1`;
($exporter_version) = $exporter_version =~ /version (\S+)/;
diag('prometheus-postgres-exporter ' . ($exporter_version // 'of unknown version'));

# Discord id of portal user $g; every one is a guild member.
sub did { return sprintf('26%016d', $_[0]); }
my @linked = (1, 3, 11 .. 18);

start_mock();
setup_guild(members => [ map { { id => did($_), roles => [ROLE_ENTITLED] } } @linked ]);
mock_post('/_mock/users', { id => did(1), username => 'alice_d' });
# One request at a time, so that the injected faults meet requests in turn;
# no scheduled reconcile (only the one after the scan, and ours); the
# smallest invalid-request budget (10), whose half the traffic below reaches
# with its last request; a short request timeout for the unanswered one.
my $node = new_node('prometheus', conf => {
	'lhdiscord.max_concurrency' => 1,
	'lhdiscord.reconcile_interval' => 0,
	'lhdiscord.invalid_request_budget' => 10,
	'lhdiscord.request_timeout' => 1500 });
my $q = sub { $node->safe_psql('postgres', $_[0]) };
my $settled = sub {
	my ($what) = @_;
	return wait_for(sub {
		$q->(q{SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight')}) eq '0' }, 60, $what);
};

# ---------- traffic ----------

# Role changes meet, in turn: two 503s, three 429s, a request never answered
# (a timeout: no response) and a 403 (50013, the job fails); the rest
# succeed, the retried ones too.  (Not a dropped connection: curl sends the
# request again on a fresh one by itself.)
mock_post('/_mock/faults', [
	{ method => 'PUT', path => '/roles/\d+$', status => 503, count => 2 },
	{ method => 'PUT', path => '/roles/\d+$', status => 429, retry_after => 0.3, count => 3 },
	{ method => 'PUT', path => '/roles/\d+$', hang => JSON::PP::true, count => 1 },
	{ method => 'PUT', path => '/roles/\d+$', status => 403, code => 50013, message => 'Missing Permissions', count => 1 } ]);
# Users for every reconcile outcome (the scan below entitles the linked ones):
# 2, in scope without an account, is suspended and its sessions revoked; 3,
# suspended but entitled, is activated; 4, out of scope, is suspended; 5, an
# admin, is exempt; 6, suspended and out of scope, has a portal role removed.
$q->(qq{
	SELECT lhdiscord.map_role('traveler', '@{[ ROLE_TRAVELER ]}');
	SELECT lhdiscord.map_role('resident', '@{[ ROLE_RESIDENT ]}');
	SELECT lhdiscord.map_role('hauling.member', '@{[ ROLE_ENTITLED ]}');
	INSERT INTO lhdiscord.users (user_id, username, membership_level, status, in_scope)
	  VALUES (1, 'alice', 'traveler', 'active', true), (2, 'bob', 'traveler', 'active', true),
	         (3, 'carol', 'traveler', 'active', true), (4, 'dave', 'traveler', 'active', false),
	         (5, 'erin', 'traveler', 'active', true), (6, 'frank', 'traveler', 'suspended', false);
	INSERT INTO lhdiscord.users (user_id, username, membership_level)
	  SELECT g, 'u' || g, 'traveler' FROM generate_series(11, 18) g;
	INSERT INTO lhdiscord.user_roles VALUES (4, 'forum.poster'), (5, 'admin'), (6, 'forum.poster');
});
# Roles known, so that each link is one PUT.
$q->("INSERT INTO lhdiscord.role_state VALUES " . join(', ', map { "('" . did($_) . "', '{}')" } @linked));
$q->("SELECT count(lhdiscord.link_account(g, '26' || lpad(g::text, 16, '0'), 'd' || g)) FROM unnest('{"
	  . join(',', @linked) . "}'::bigint[]) g");
ok($settled->('link convergences'), 'links converged');
is($q->(q{SELECT state, count(*) FROM lhdiscord.outbox GROUP BY 1 ORDER BY 1}), "done|9\nfailed|1",
	'nine links done, the one that met the 403 failed');
$q->(q{UPDATE lhdiscord.users SET status = 'suspended' WHERE user_id = 3});

# A DM (two 2xx: the channel, the message).
$q->(qq{INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload)
	VALUES ('dm', '@{[ did(1) ]}', '{"content": "metrics are coming"}')});
ok(wait_for(sub { scalar(@{ mock_get('/_mock/messages') }) == 1 }, 20, 'DM'), 'DM delivered');
ok($settled->('DM and suspension'), 'DM and suspension settled');

# A member scan; the reconcile the worker runs after it meets a trigger that
# refuses to change users: a worker error, recovered from.
$q->(q{
	CREATE FUNCTION public.lhd_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'lhd test: users refuses changes'; END $$;
	CREATE TRIGGER lhd_test_refuse BEFORE UPDATE ON lhdiscord.users
	  FOR EACH ROW EXECUTE FUNCTION public.lhd_test_refuse();
});
my $snap = $q->('SELECT lhdiscord.request_member_scan()');
ok(wait_for(sub { $q->("SELECT complete FROM lhdiscord.member_snapshots WHERE id = $snap") eq 't' }, 30),
	'member scan complete');
ok(wait_for(sub { $q->('SELECT worker_errors FROM lhdiscord.worker_status') eq '1' }, 30, 'worker error'),
	'the reconcile after the scan failed in the worker: one recovered error');
$q->('DROP TRIGGER lhd_test_refuse ON lhdiscord.users; DROP FUNCTION public.lhd_test_refuse()');

# The reconcile, run by governance: one user per action, one exemption.
is($q->('SELECT user_id, action FROM lhdiscord.reconcile() ORDER BY user_id'),
	"2|suspend_revoke_sessions\n3|activate\n4|suspend\n6|remove_roles", 'reconcile: one user per action');
# The safety guard: 12 more users would all be suspended.
$q->(q{INSERT INTO lhdiscord.users (user_id, username, membership_level)
	SELECT g, 'u' || g, 'traveler' FROM generate_series(101, 112) g});
is($q->('SELECT count(*) FROM lhdiscord.reconcile()'), '0', 'a reconcile the safety guard aborts');
$q->('DELETE FROM lhdiscord.users WHERE user_id > 100');
# The shrink guard holds an empty snapshot back.
my $held = $q->(q{SELECT lhdiscord.load_snapshot('[]')});
is($q->("SELECT trusted FROM lhdiscord.member_snapshots WHERE id = $held"), 'f', 'an empty snapshot is held');
ok($settled->('the convergences reconcile queued'), 'the convergences reconcile queued settled');

# Last, a 401 on the next role change pauses sending; the promotion and a DM
# queued afterwards stay pending.
mock_post('/_mock/faults', { path => '/roles/\d+$', status => 401, count => 1 });
$q->(q{UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 11});
ok(wait_for(sub { $q->('SELECT paused FROM lhdiscord.worker_status') eq 't' }, 30, 'pause'),
	'a 401 paused sending');
$q->(qq{INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload)
	VALUES ('dm', '@{[ did(1) ]}', '{"content": "this one waits"}')});

# Quiescent: paused, nothing in flight, the worker's counters still.
my $counters = q{SELECT calls, responses_2xx, responses_4xx, responses_5xx, rate_limited, transport_errors,
	invalid_requests_10min, throttled, worker_errors, in_flight_jobs, pending_jobs FROM lhdiscord.worker_status};
my $last = '';
ok(wait_for(sub {
	my $now = $q->($counters);
	my $still = $now eq $last && $now =~ /\|0\|[1-9]\d*$/;
	$last = $now;
	usleep(500_000) unless $still;
	return $still;
}, 30, 'a quiescent node'), 'quiescent: paused, nothing in flight, counters still');

# What the traffic above must have left (the test of the test).
is($q->(q{SELECT responses_5xx, rate_limited, transport_errors, invalid_requests_10min, throttled, paused
	FROM lhdiscord.worker_status}), '2|3|1|5|t|t',
	'two 5xx, three 429s, one request unanswered, five invalid requests (three 429s, a 403, a 401): throttled, paused');
cmp_ok($q->('SELECT responses_2xx FROM lhdiscord.worker_status'), '>=', 12, 'and a dozen 2xx at least');

# ---------- the exporter ----------

$q->('CREATE ROLE ' . MONITOR . ' LOGIN; GRANT lhdiscord_monitor TO ' . MONITOR);
is($q->(q{SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls,
	string_agg(g.rolname, ',') FROM pg_roles r
	JOIN pg_auth_members m ON m.member = r.oid JOIN pg_roles g ON g.oid = m.roleid
	WHERE r.rolname = '} . MONITOR . q{' GROUP BY 1, 2, 3, 4}), 'f|f|f|f|lhdiscord_monitor',
	'the exporter\'s role: no attribute, a member of lhdiscord_monitor only');

# The database's values, as the exporter's role sees them: metric name and
# sorted labels (without the exporter's own server label) => value.
sub db_metrics
{
	my %m;
	my $as = sub {
		my ($sql) = @_;
		return $node->safe_psql('postgres', $sql, extra_params => [ '-U', MONITOR ]);
	};
	my @cols = split /\n/, $q->(q{SELECT attname FROM pg_attribute
		WHERE attrelid = 'lhdiscord.metrics'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum});
	my @vals = split /\|/, $as->('SELECT ' . join(', ', map { "coalesce(${_}::text, 'NaN')" } @cols)
		. ' FROM lhdiscord.metrics'), -1;
	$m{"lhdiscord_$cols[$_]"} = $vals[$_] for 0 .. $#cols;
	for (split /\n/, $as->('SELECT kind, state, jobs FROM lhdiscord.metrics_outbox'))
	{
		my ($k, $s, $v) = split /\|/;
		$m{"lhdiscord_outbox_jobs{kind=$k,state=$s}"} = $v;
	}
	for (split /\n/, $as->('SELECT class, responses_total FROM lhdiscord.metrics_responses'))
	{
		my ($c, $v) = split /\|/;
		$m{"lhdiscord_discord_responses_total{class=$c}"} = $v;
	}
	for (split /\n/, $as->('SELECT action, changes_total FROM lhdiscord.metrics_reconcile'))
	{
		my ($a, $v) = split /\|/;
		$m{"lhdiscord_reconcile_changes_total{action=$a}"} = $v;
	}
	return \%m;
}

# The text exposition format: (samples: key => value, types: name => type,
# server: the server label).
sub parse_exposition
{
	my ($text) = @_;
	my (%samples, %types, %server);
	for my $line (split /\n/, $text)
	{
		if ($line =~ /^# TYPE (\S+) (\S+)$/) { $types{$1} = $2; next; }
		next if $line =~ /^#/ || $line !~ /\S/;
		my ($name, $labels, $value) = $line =~ /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)(?: -?\d+)?$/
		  or do { diag("unparsable line: $line"); next; };
		my %l;
		while (defined $labels && $labels =~ /\G([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)",?/gc)
		{
			my ($k, $v) = ($1, $2);
			$v =~ s/\\(["\\])/$1/g;
			$v =~ s/\\n/\n/g;
			$l{$k} = $v;
		}
		$server{ delete $l{server} } = 1 if exists $l{server} && $name =~ /^lhdiscord_/;
		my $key = %l ? $name . '{' . join(',', map { "$_=$l{$_}" } sort keys %l) . '}' : $name;
		$samples{$key} = $value;
	}
	return (\%samples, \%types, [ sort keys %server ]);
}

sub free_port
{
	my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp', Listen => 1)
	  or die "no free port: $!";
	my $port = $s->sockport;
	close $s;
	return $port;
}

my $logdir = PostgreSQL::Test::Utils::tempdir();
my $exporter_log = "$logdir/exporter.log";
my $dsn = sprintf('host=%s port=%d user=%s dbname=postgres sslmode=disable', $node->host, $node->port, MONITOR);
my $http = HTTP::Tiny->new(timeout => 10);
my ($exporter_pid, $url);

sub stop_exporter
{
	return unless $exporter_pid;
	kill 'TERM', $exporter_pid;
	my $deadline = time() + 10;
	while (time() < $deadline)
	{
		last if waitpid($exporter_pid, WNOHANG) != 0;
		usleep(50_000);
	}
	if (kill 0, $exporter_pid)
	{
		kill 'KILL', $exporter_pid;
		waitpid($exporter_pid, 0);
	}
	$exporter_pid = undef;
}
END { stop_exporter(); }

# Start it on a free loopback port (another port if that one was taken in
# the meantime); /metrics answers once it listens.
for my $try (1 .. 3)
{
	my $port = free_port();
	$url = "http://127.0.0.1:$port/metrics";
	$exporter_pid = fork();
	die "fork: $!" unless defined $exporter_pid;
	if ($exporter_pid == 0)
	{
		open(STDOUT, '>>', $exporter_log) or die;
		open(STDERR, '>&', \*STDOUT) or die;
		$ENV{DATA_SOURCE_NAME} = $dsn;
		exec(EXPORTER, "--extend.query-path=$queries", "--web.listen-address=127.0.0.1:$port")
		  or die "exec: $!";
	}
	my $up = wait_for(sub {
		return 1 if waitpid($exporter_pid, WNOHANG) != 0;    # it exited
		my $r = $http->get($url);
		return $r->{success};
	}, 30, "the exporter on port $port");
	last if $up && kill(0, $exporter_pid) && waitpid($exporter_pid, WNOHANG) == 0;
	diag("the exporter did not start on port $port (try $try):\n" . slurp_file($exporter_log));
	stop_exporter();
}
ok($exporter_pid, "the exporter serves $url") or do { done_testing(); exit 1; };

# A first scrape connects and learns the server version; the next ones are
# the ones compared.  Database before, scrape, database after: where before
# and after agree, the scrape must show exactly that; ages lie between them.
my %age = map { $_ => 1 } qw(lhdiscord_outbox_oldest_pending_age_seconds lhdiscord_snapshot_age_seconds);
ok($http->get($url)->{success}, 'a first scrape');
my ($before, $after, $samples, $types, $servers);
my $stable = 0;
for my $try (1 .. 5)
{
	$before = db_metrics();
	my $r = $http->get($url);
	$after = db_metrics();
	unless ($r->{success})
	{
		diag("scrape failed: $r->{status} $r->{content}");
		next;
	}
	($samples, $types, $servers) = parse_exposition($r->{content});
	# Kept with the test's logs (tmp_check/log), for a look after a failure.
	open(my $fh, '>', "$PostgreSQL::Test::Utils::log_path/260_prometheus_metrics.txt") or die $!;
	print $fh $r->{content};
	close $fh;
	if (!grep { !$age{ s/\{.*//r } && $before->{$_} ne $after->{$_} } keys %$before)
	{
		$stable = 1;
		last;
	}
	diag("the database moved during scrape $try; again");
	usleep(500_000);
}
ok($stable, 'the database held still during a scrape');

# Every metric, with the value the database holds.
my @expected = sort keys %$before;
is(scalar(@expected), 18 + 25 + 3 + 4, 'the database gives 50 values (18 scalars, 25 queue pairs, 3 classes, 4 actions)');
for my $key (@expected)
{
	my $name = $key =~ s/\{.*//r;
	my $got = $samples->{$key};
	if (!defined $got)
	{
		fail("$key is on /metrics");
		next;
	}
	if ($age{$name})
	{
		ok($got >= $before->{$key} - 1e-6 && $got <= $after->{$key} + 1e-6,
			"$key = $got, between the database's $before->{$key} and $after->{$key}");
		cmp_ok($got, '>', 0, "$key is not trivial");
	}
	elsif ($before->{$key} eq 'NaN')
	{
		is($got, 'NaN', "$key = NaN (NULL in the database)");
	}
	else
	{
		ok($got =~ /^-?[0-9.e+]+$/ && $got == $before->{$key}, "$key = $got, as in the database ($before->{$key})");
	}
	is($types->{$name}, $name =~ /_total$/ ? 'counter' : 'gauge', "$name is a " . ($types->{$name} // 'metric of no type'));
}
# ... and no lhdiscord metric the database does not give.
my %want = map { $_ => 1 } @expected;
is_deeply([ sort grep { /^lhdiscord_/ && !$want{$_} } keys %$samples ], [], 'no other lhdiscord metric');
is_deeply($servers, [ $node->host . ':' . $node->port ], 'server label: the node\'s socket and port');

# Not trivial: what the traffic left is on /metrics.
my %nontrivial = (
	lhdiscord_worker_running => 1,
	lhdiscord_worker_paused => 1,
	lhdiscord_worker_throttled => 1,
	lhdiscord_worker_errors_total => 1,
	'lhdiscord_discord_responses_total{class=4xx}' => 5,
	'lhdiscord_discord_responses_total{class=5xx}' => 2,
	lhdiscord_discord_rate_limited_total => 3,
	lhdiscord_discord_transport_errors_total => 1,
	lhdiscord_discord_invalid_requests => 5,
	lhdiscord_discord_invalid_request_budget => 10,
	'lhdiscord_outbox_jobs{kind=roles,state=failed}' => 1,
	'lhdiscord_outbox_jobs{kind=roles,state=pending}' => 1,
	'lhdiscord_outbox_jobs{kind=dm,state=pending}' => 1,
	'lhdiscord_outbox_jobs{kind=dm,state=done}' => 1,
	'lhdiscord_outbox_jobs{kind=member_scan,state=done}' => 1,
	'lhdiscord_reconcile_changes_total{action=activate}' => 1,
	'lhdiscord_reconcile_changes_total{action=suspend}' => 1,
	'lhdiscord_reconcile_changes_total{action=suspend_revoke_sessions}' => 1,
	'lhdiscord_reconcile_changes_total{action=remove_roles}' => 1,
	lhdiscord_reconcile_aborted_total => 1,
	lhdiscord_reconcile_exemptions_total => 1,
	lhdiscord_governance_discord_leading => 1,
	lhdiscord_snapshot_fresh => 1,
	lhdiscord_snapshot_members => scalar(@linked),
	lhdiscord_snapshot_held => 1,
	lhdiscord_snapshot_max_age_seconds => 21600);
is($samples->{$_}, $nontrivial{$_}, "$_ is $nontrivial{$_}") for sort keys %nontrivial;
cmp_ok($samples->{'lhdiscord_discord_responses_total{class=2xx}'}, '>=', 12, '2xx responses: a dozen at least');
cmp_ok($samples->{lhdiscord_discord_requests_total}, '==',
	$samples->{'lhdiscord_discord_responses_total{class=2xx}'} + $samples->{'lhdiscord_discord_responses_total{class=4xx}'}
	  + $samples->{'lhdiscord_discord_responses_total{class=5xx}'} + $samples->{lhdiscord_discord_transport_errors_total},
	'requests sent: every response of every class, and the one that got none');

# The exporter itself: the file loaded, every query ran.
my ($load) = grep { /^pg_exporter_user_queries_load_error\{/ } keys %$samples;
ok(defined $load && $samples->{$load} == 0, 'pg_exporter_user_queries_load_error 0: the queries file loaded')
  or diag($load // 'no pg_exporter_user_queries_load_error');
is($samples->{pg_exporter_last_scrape_error}, 0, 'pg_exporter_last_scrape_error 0');
is($samples->{pg_up}, 1, 'pg_up 1');
unlike(slurp_file($exporter_log), qr/Error running query on database.{0,300}?: lhdiscord/,
	'the exporter logged no error of an lhdiscord query');

my $pid = $exporter_pid;
stop_exporter();
ok(!kill(0, $pid), "the exporter (pid $pid) is stopped");
diag("exporter log:\n" . slurp_file($exporter_log)) unless Test::More->builder->is_passing;
$node->stop;
done_testing();
