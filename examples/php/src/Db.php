<?php

// examples/php/src/Db.php: the one place that talks to PDO. Every statement
// is prepared on the server and every value travels as a bind parameter
// (the extended query protocol: the server log shows $1, never the value;
// write them as ? in the SQL text, PDO numbers them),
// and every PDOException leaves here as the LhdiscordException ErrorMap
// picks. No method takes SQL with values spliced in; callers pass the SQL
// text as a constant and the values as $params.

declare(strict_types=1);

namespace Lhdiscord;

final class Db
{
    /**
     * Wrap a connection, e.g. Laravel's own: new Db(DB::connection()->getPdo()).
     * Only the error mode and real prepares are set on it (Laravel's
     * defaults too); fetch modes are chosen per call, so a shared PDO keeps
     * its defaults.
     */
    public function __construct(private readonly \PDO $pdo)
    {
        $pdo->setAttribute(\PDO::ATTR_ERRMODE, \PDO::ERRMODE_EXCEPTION);
        // Real server-side prepares: values never become part of the SQL.
        $pdo->setAttribute(\PDO::ATTR_EMULATE_PREPARES, false);
    }

    /**
     * Connect, e.g. Db::connect('pgsql:host=/var/run/postgresql;dbname=portal;
     * application_name=portal', 'portal', $password): any libpq keyword may
     * follow in the DSN.
     */
    public static function connect(string $dsn, string $user, ?string $password): self
    {
        try {
            $pdo = new \PDO($dsn, $user, $password, [\PDO::ATTR_ERRMODE => \PDO::ERRMODE_EXCEPTION]);
        } catch (\PDOException $e) {
            throw ErrorMap::fromPdo($e);
        }
        return new self($pdo);
    }

    public function pdo(): \PDO
    {
        return $this->pdo;
    }

    /**
     * All rows of a statement.
     *
     * @param list<int|string|bool|float|null> $params values for the ?s, in order
     * @return list<array<string, mixed>>
     */
    public function all(string $sql, array $params = []): array
    {
        return $this->run($sql, $params)->fetchAll(\PDO::FETCH_ASSOC);
    }

    /**
     * The first row, or null.
     *
     * @param list<int|string|bool|float|null> $params
     * @return array<string, mixed>|null
     */
    public function one(string $sql, array $params = []): ?array
    {
        $row = $this->run($sql, $params)->fetch(\PDO::FETCH_ASSOC);
        return $row === false ? null : $row;
    }

    /**
     * The first column of the first row, or null.
     *
     * @param list<int|string|bool|float|null> $params
     */
    public function value(string $sql, array $params = []): mixed
    {
        $row = $this->run($sql, $params)->fetch(\PDO::FETCH_NUM);
        return $row === false ? null : $row[0];
    }

    /**
     * Run a statement that returns no rows; the number of rows it touched.
     *
     * @param list<int|string|bool|float|null> $params
     */
    public function execute(string $sql, array $params = []): int
    {
        return $this->run($sql, $params)->rowCount();
    }

    /**
     * Run $fn in one transaction: committed when it returns, rolled back
     * (and the error mapped) when it throws. lhdiscord queues its Discord
     * work in the caller's transaction, so a rollback sends nothing. Inside
     * a transaction already open on the connection (Laravel's
     * DB::transaction()), $fn simply runs in it.
     *
     * @template T
     * @param callable(self): T $fn
     * @return T
     */
    public function transaction(callable $fn): mixed
    {
        if ($this->pdo->inTransaction()) {
            return $fn($this);
        }
        try {
            $this->pdo->beginTransaction();
        } catch (\PDOException $e) {
            throw ErrorMap::fromPdo($e);
        }
        try {
            $result = $fn($this);
            $this->pdo->commit();
            return $result;
        } catch (\Throwable $e) {
            if ($this->pdo->inTransaction()) {
                $this->pdo->rollBack();
            }
            throw $e instanceof \PDOException ? ErrorMap::fromPdo($e) : $e;
        }
    }

    /**
     * Run a file of DDL with no values in it (a migration). Simple query
     * protocol: for schema files only, never for statements carrying data.
     */
    public function migrate(string $sqlFile): void
    {
        $sql = file_get_contents($sqlFile);
        if ($sql === false) {
            throw new \RuntimeException("cannot read $sqlFile");
        }
        try {
            $this->pdo->exec($sql);
        } catch (\PDOException $e) {
            throw ErrorMap::fromPdo($e);
        }
    }

    /** @param list<int|string|bool|float|null> $params */
    private function run(string $sql, array $params): \PDOStatement
    {
        try {
            $stmt = $this->pdo->prepare($sql);
            foreach (array_values($params) as $i => $v) {
                $stmt->bindValue($i + 1, $v, match (true) {
                    $v === null => \PDO::PARAM_NULL,
                    is_int($v) => \PDO::PARAM_INT,
                    is_bool($v) => \PDO::PARAM_BOOL,
                    default => \PDO::PARAM_STR,
                });
            }
            $stmt->execute();
            return $stmt;
        } catch (\PDOException $e) {
            throw ErrorMap::fromPdo($e);
        }
    }
}
