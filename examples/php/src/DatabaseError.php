<?php

// examples/php/src/DatabaseError.php: any error no other class maps (a
// connection loss, a serialization failure, a bug). Log it and answer 500.

declare(strict_types=1);

namespace Lhdiscord;

class DatabaseError extends LhdiscordException
{
}
