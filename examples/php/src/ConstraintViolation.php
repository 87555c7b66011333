<?php

// examples/php/src/ConstraintViolation.php: any other 23xxx (a CHECK, NOT
// NULL or unique constraint of a table the application writes): the row was
// refused.

declare(strict_types=1);

namespace Lhdiscord;

class ConstraintViolation extends LhdiscordException
{
}
