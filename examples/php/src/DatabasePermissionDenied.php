<?php

// examples/php/src/DatabasePermissionDenied.php: 42501 from PostgreSQL itself
// ("permission denied for ..."): the database role lacks a grant. A
// deployment bug, never the user's fault.

declare(strict_types=1);

namespace Lhdiscord;

class DatabasePermissionDenied extends LhdiscordException
{
}
